//! The backend's two routes, shared by this example's `main.rs` and by `cloud-tasks demo` (which
//! includes this file), so the demo exercises the handler a backend would deploy.
//!
//! - `POST /api/documents` with `{"filename": "..."}`: the upload endpoint. It enqueues a
//!   document-processing task and answers 202 with the document ID and task name.
//! - `POST /api/tasks/process-document`: the task handler Cloud Tasks calls. It verifies the
//!   OIDC token, reads the `X-CloudTasks-*` headers and the JSON body with
//!   `cloud_tasks::receiver::receive`, then hands the delivery to a [`Processor`]. A 2xx answer
//!   completes the task; anything else makes Cloud Tasks retry it.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cloud_tasks::receiver::{self, Delivery, OidcVerifier, Rejection};
use cloud_tasks::{CloudTasksClient, PROCESS_DOCUMENT_PATH, ProcessDocumentPayload, Uuid};
use serde::Deserialize;

/// Path of the upload endpoint.
pub const UPLOAD_PATH: &str = "/api/documents";

/// The work done for a verified delivery: the application's part.
pub trait Processor: Send + Sync + 'static {
    /// Processes one document. An error makes the handler answer 500, so Cloud Tasks retries.
    fn process(
        &self,
        delivery: Delivery<ProcessDocumentPayload>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Called for each request the handler refused; the handler logs it already.
    fn rejected(&self, _rejection: &Rejection) {}
}

/// What both routes need.
pub struct App<P> {
    /// Enqueues from the upload route.
    pub client: CloudTasksClient,
    /// Checks the task route's OIDC tokens.
    pub verifier: OidcVerifier,
    /// Does the work.
    pub processor: P,
}

/// The upload and task routes over `app`.
pub fn router<P: Processor>(app: App<P>) -> Router {
    Router::new()
        .route(UPLOAD_PATH, post(upload::<P>))
        .route(PROCESS_DOCUMENT_PATH, post(process_document::<P>))
        .with_state(Arc::new(app))
}

#[derive(Deserialize)]
struct Upload {
    filename: String,
}

async fn upload<P: Processor>(State(app): State<Arc<App<P>>>, body: Bytes) -> Response {
    let upload: Upload = match serde_json::from_slice(&body) {
        Ok(upload) => upload,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"filename\": \"...\"}}: {error}"),
            )
                .into_response();
        }
    };
    // A real backend stores the upload first; the ID is what the task carries.
    let document_id = Uuid::new_v4();
    match app
        .client
        .create_document_processing_task(document_id, &upload.filename)
        .await
    {
        Ok(enqueued) => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "document_id": document_id, "task": enqueued.task_name() }),
        ),
        Err(error) => {
            tracing::error!(%error, "enqueuing failed");
            let status = if error.is_config() || error.is_invalid_argument() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, error.to_string()).into_response()
        }
    }
}

async fn process_document<P: Processor>(
    State(app): State<Arc<App<P>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delivery = match receiver::receive(&app.verifier, &headers, &body).await {
        Ok(delivery) => delivery,
        Err(rejection) => {
            tracing::warn!(%rejection, "refused a task request");
            app.processor.rejected(&rejection);
            // The caller learns which check failed, not what was expected.
            let message = match &rejection {
                Rejection::Token(error) => {
                    format!("OIDC token rejected: {} check failed", error.check())
                }
                other => other.to_string(),
            };
            return (rejection.status_code(), message).into_response();
        }
    };
    let task = delivery.context.task_name.clone();
    match app.processor.process(delivery).await {
        Ok(()) => (StatusCode::OK, "processed").into_response(),
        Err(error) => {
            tracing::warn!(%task, %error, "processing failed; Cloud Tasks will retry");
            (StatusCode::INTERNAL_SERVER_ERROR, error).into_response()
        }
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}
