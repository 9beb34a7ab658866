//! Google credentials over TLS: the `authorization` header, token caching, and secret hygiene.

mod common;

use cloud_tasks::Uuid;
use common::*;

const TOKEN: &str = "ya29.test-access-token-4f9c2a7e";

#[tokio::test]
async fn credentials_add_a_bearer_token_over_tls_fetched_once() {
    let tokens = token_endpoint(Some(TOKEN)).await;
    let (server, client) = tls_server_and_client(&tokens.url).await;

    for name in ["a.pdf", "b.pdf", "c.pdf"] {
        client
            .create_document_processing_task(Uuid::new_v4(), name)
            .await
            .unwrap();
    }

    let calls = server.create_task_calls();
    assert_eq!(calls.len(), 3);
    for call in &calls {
        assert_eq!(
            call.metadata.get("authorization").unwrap(),
            format!("Bearer {TOKEN}").as_str()
        );
        assert!(call.metadata.get("x-goog-request-params").is_some());
    }
    assert_eq!(
        tokens.request_count(),
        1,
        "the token is cached, not fetched per call"
    );
}

#[tokio::test]
async fn a_plaintext_endpoint_is_refused_outside_emulator_mode() {
    let tokens = token_endpoint(Some(TOKEN)).await;
    let error = builder()
        .with_endpoint("http://127.0.0.1:8123")
        .with_credentials(credentials(&tokens.url))
        .build()
        .unwrap_err();
    assert!(error.is_config());
    let message = error.to_string();
    assert!(message.contains("must use https://"), "{message}");
    assert!(message.contains("CLOUD_TASKS_EMULATOR_HOST"), "{message}");
}

#[tokio::test]
async fn failing_credentials_are_an_auth_error_and_nothing_is_sent() {
    let tokens = token_endpoint(None).await;
    let (server, client) = tls_server_and_client(&tokens.url).await;
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(error.is_auth(), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("gcloud auth application-default login"),
        "{error}"
    );
    assert!(server.create_task_calls().is_empty());
}
