//! An example backend: an upload route that enqueues, and the task route Cloud Tasks calls,
//! which verifies the OIDC token and processes the document.
//!
//! Against the local emulator (see docs/LOCAL_DEVELOPMENT.md):
//!
//! ```sh
//! cargo run --features demo -- emulator          # prints the variables to export
//! # export them in another shell, then:
//! cargo run --features demo --example backend
//! curl -X POST localhost:8080/api/documents -d '{"filename": "report.pdf"}'
//! ```
//!
//! In production the same binary reads the real settings and verifies Google-signed tokens.

mod app;

use std::sync::Arc;

use cloud_tasks::receiver::{CloudTask, OidcVerifier, TaskOutcome};
use cloud_tasks::{CloudTasksClient, ProcessDocumentPayload, Settings};
use tokio::net::TcpListener;

/// Processing stands in for the real work (download, OCR, ...): it logs.
struct LogProcessor;

impl app::Processor for LogProcessor {
    async fn process(&self, task: &CloudTask<ProcessDocumentPayload>) -> TaskOutcome {
        tracing::info!(
            document_id = %task.payload.document_id,
            filename = %task.payload.filename,
            task = %task.context.task_name,
            attempt = task.context.attempt(),
            caller = %task.token.email,
            "processing document"
        );
        TaskOutcome::Done
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = Settings::from_env()?;
    let client = CloudTasksClient::from_settings(&settings)?;
    // The audience and account the client enqueues with; Google as the issuer unless
    // CLOUD_TASKS_OIDC_ISSUER names an https one or a loopback http one (the emulator); on
    // Cloud Run behind invoker IAM, CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN=true (the Terraform
    // sets it). A bad or unsafe value stops the backend here, naming the variable.
    let verifier = OidcVerifier::from_settings(&settings).build()?;
    let address = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = TcpListener::bind(&address).await?;
    tracing::info!(
        %address,
        audience = verifier.audience(),
        issuers = ?verifier.issuers(),
        verified_by_cloud_run = verifier.is_verified_by_cloud_run(),
        "backend listening"
    );
    let app = app::App {
        client,
        verifier,
        processor: Arc::new(LogProcessor),
        documents: app::Documents::default(),
    };
    axum::serve(listener, app::router(app)).await?;
    Ok(())
}
