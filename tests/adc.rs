//! Application Default Credentials: a credentials file named by GOOGLE_APPLICATION_CREDENTIALS
//! produces the `authorization` header.
//!
//! One test in its own binary, since it sets a process-wide environment variable.

mod common;

use cloud_tasks::Uuid;
use common::*;

const TOKEN: &str = "ya29.adc-token-from-file";

#[test]
fn application_default_credentials_come_from_the_environment() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tokens = token_endpoint(Some(TOKEN)).await;
        let path = std::env::temp_dir().join(format!("adc-{}.json", Uuid::new_v4()));
        std::fs::write(&path, authorized_user_json(&tokens.url).to_string()).unwrap();
        // SAFETY: set before the client reads it, while this test's single runtime thread is the
        // only one running; no other test shares this process.
        unsafe { std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &path) };

        let (server, builder) = tls_server().await;
        let client = builder.build().unwrap();
        let result = client
            .create_document_processing_task(Uuid::new_v4(), "a.pdf")
            .await;
        std::fs::remove_file(&path).unwrap();
        result.unwrap();

        let calls = server.create_task_calls();
        assert_eq!(
            calls[0].metadata.get("authorization").unwrap(),
            format!("Bearer {TOKEN}").as_str()
        );
        assert_eq!(tokens.request_count(), 1);
    });
}
