//! Emulator mode never loads or sends Google credentials, even where Application Default
//! Credentials are configured. One test in its own binary, since it sets a process-wide
//! environment variable.

mod common;

use std::time::Duration;

use cloud_tasks::{CloudTasksClient, Settings, Uuid};
use common::*;
use tokio::net::TcpListener;

#[test]
fn emulator_mode_sends_no_google_credentials() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tokens = token_endpoint(Some("ya29.must-not-be-used")).await;
        let path = std::env::temp_dir().join(format!("adc-{}.json", Uuid::new_v4()));
        std::fs::write(&path, authorized_user_json(&tokens.url).to_string()).unwrap();
        // SAFETY: set before any client reads it, while this test's single runtime thread is the
        // only one running; no other test shares this process.
        unsafe { std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &path) };

        // Control: a client for Google picks these credentials up and asks for a token.
        let google = builder()
            .with_endpoint("https://127.0.0.1:1")
            .with_attempt_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        google
            .create_document_processing_task(Uuid::new_v4(), "control.pdf")
            .await
            .unwrap_err();
        let control_requests = tokens.request_count();
        assert!(control_requests > 0, "the ADC file is in effect");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator = listener.local_addr().unwrap();
        tokio::spawn(cloud_tasks_emulator::serve(
            listener,
            format!("http://{emulator}"),
            vec![QUEUE_PATH.to_owned()],
        ));
        let vars = [
            ("GCP_PROJECT_ID", PROJECT),
            ("GCP_LOCATION", LOCATION),
            ("CLOUD_TASKS_QUEUE", QUEUE),
            // Nothing listens there; delivery is not what this test is about.
            ("CLOUD_RUN_SERVICE_URL", "http://127.0.0.1:9"),
            ("CLOUD_RUN_SERVICE_ACCOUNT", SERVICE_ACCOUNT),
        ];
        let emulator_host = emulator.to_string();
        let settings = Settings::from_lookup(|name| {
            if name == cloud_tasks::EMULATOR_HOST_VAR {
                return Some(emulator_host.clone());
            }
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| (*value).to_owned())
        });
        let client = CloudTasksClient::from_settings(&settings).unwrap();
        let enqueued = client
            .create_document_processing_task(Uuid::new_v4(), "local.pdf")
            .await
            .unwrap();
        assert!(
            enqueued.task_name().starts_with(QUEUE_PATH),
            "{}",
            enqueued.task_name()
        );
        assert_eq!(
            tokens.request_count(),
            control_requests,
            "emulator mode asked for a Google token"
        );
        std::fs::remove_file(&path).ok();
    });
}
