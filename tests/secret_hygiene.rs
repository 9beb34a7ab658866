//! Tokens never appear in logs, `Debug` output or errors.
//!
//! One test in its own binary: it installs a tracing subscriber, and tracing caches which
//! call sites are enabled across the threads of one test binary.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use cloud_tasks::testing::Fault;
use cloud_tasks::{Code, Uuid};
use common::*;

const TOKEN: &str = "ya29.test-access-token-4f9c2a7e";

/// Collects everything every tracing span and event writes, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_never_reach_logs_debug_output_or_errors() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = common::subscriber::set_default(subscriber);

    let tokens = token_endpoint(Some(TOKEN)).await;
    let (server, client) = tls_server_and_client(&tokens.url).await;
    client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap();
    server.push_fault(Fault::Reject(Code::PermissionDenied, "denied".to_owned()));
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "b.pdf")
        .await
        .unwrap_err();

    assert_eq!(
        server.create_task_calls()[0]
            .metadata
            .get("authorization")
            .unwrap(),
        format!("Bearer {TOKEN}").as_str(),
        "the token was really used"
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("enqueued task"), "{logs}");
    assert!(logs.contains("CreateTask failed"), "{logs}");
    for (place, text) in [
        ("logs", logs),
        ("client Debug", format!("{client:?}")),
        ("error Display", error.to_string()),
        ("error Debug", format!("{error:?}")),
    ] {
        assert!(!text.contains(TOKEN), "the token leaked into {place}");
        assert!(
            !text.contains("test-refresh-token"),
            "the refresh token leaked into {place}"
        );
        assert!(
            !text.contains("test-client-secret"),
            "the client secret leaked into {place}"
        );
    }
}
