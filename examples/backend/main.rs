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

use cloud_tasks::receiver::{Delivery, OIDC_ISSUER_VAR, OidcVerifier};
use cloud_tasks::{CloudTasksClient, ProcessDocumentPayload, Settings};
use tokio::net::TcpListener;

/// Processing stands in for the real work (download, OCR, ...): it logs.
struct LogProcessor;

impl app::Processor for LogProcessor {
    async fn process(&self, delivery: Delivery<ProcessDocumentPayload>) -> Result<(), String> {
        tracing::info!(
            document_id = %delivery.payload.document_id,
            filename = %delivery.payload.filename,
            task = %delivery.context.task_name,
            retry_count = delivery.context.retry_count,
            caller = %delivery.token.email,
            "processing document"
        );
        Ok(())
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
    let target = client.target();
    // Google's issuers and keys unless the emulator's issuer is configured.
    let mut verifier = OidcVerifier::builder(target.service_url(), target.service_account_email());
    if let Ok(issuer) = std::env::var(OIDC_ISSUER_VAR) {
        verifier = verifier.with_issuer(issuer);
    }
    let address = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = TcpListener::bind(&address).await?;
    tracing::info!(%address, audience = target.service_url(), "backend listening");
    let app = app::App {
        client,
        verifier: verifier.build(),
        processor: LogProcessor,
    };
    axum::serve(listener, app::router(app)).await?;
    Ok(())
}
