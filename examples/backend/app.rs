//! The backend's two routes, shared by this example's `main.rs` and by `cloud-tasks demo` (which
//! includes this file), so the demo exercises the handler a backend would deploy.
//!
//! - `POST /api/documents` with `{"filename": "..."}`: the upload endpoint. It enqueues a
//!   document-processing task and answers 202 with the document ID and task name.
//! - `POST /api/tasks/process-document`: the task handler Cloud Tasks calls. The `CloudTask`
//!   extractor verifies the OIDC token, reads the `X-CloudTasks-*` headers and the JSON body
//!   before the handler runs; the handler processes the document once ([`Documents`]) with a
//!   [`Processor`] and answers with its `TaskOutcome`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cloud_tasks::receiver::{CloudTask, OidcVerifier, TaskOutcome};
use cloud_tasks::telemetry::{TRACEPARENT_HEADER, TRACESTATE_HEADER, parse_traceparent};
use cloud_tasks::{CloudTasksClient, PROCESS_DOCUMENT_PATH, ProcessDocumentPayload, Uuid};
use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use serde::Deserialize;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Path of the upload endpoint.
pub const UPLOAD_PATH: &str = "/api/documents";

/// The work done for a verified delivery: the application's part.
pub trait Processor: Send + Sync + 'static {
    /// Processes one document. [`Documents::process_once`] calls it at most once at a time per
    /// document, and not again once it answered `Done` or `GiveUp`.
    fn process(
        &self,
        task: &CloudTask<ProcessDocumentPayload>,
    ) -> impl Future<Output = TaskOutcome> + Send;
}

/// What both routes need; the task route's verifier comes from it through `FromRef`.
pub struct App<P> {
    /// Enqueues from the upload route.
    pub client: CloudTasksClient,
    /// Checks the task route's OIDC tokens.
    pub verifier: OidcVerifier,
    /// Does the work.
    pub processor: Arc<P>,
    /// Which documents are done.
    pub documents: Documents,
}

impl<P> Clone for App<P> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            verifier: self.verifier.clone(),
            processor: self.processor.clone(),
            documents: self.documents.clone(),
        }
    }
}

impl<P> FromRef<App<P>> for OidcVerifier {
    fn from_ref(app: &App<P>) -> Self {
        app.verifier.clone()
    }
}

/// The upload and task routes over `app`.
pub fn router<P: Processor>(app: App<P>) -> Router {
    Router::new()
        .route(UPLOAD_PATH, post(upload::<P>))
        .route(PROCESS_DOCUMENT_PATH, post(process_document::<P>))
        .with_state(app)
}

/// The task route: the extractor has verified everything; this is the processing, inside the
/// delivery's processing span (linked to the upload's enqueue span).
async fn process_document<P: Processor>(
    State(app): State<App<P>>,
    task: CloudTask<ProcessDocumentPayload>,
) -> TaskOutcome {
    task.run(
        app.documents
            .process_once(&task, app.processor.process(&task)),
    )
    .await
}

/// Each document's processing state, keyed by document ID: the stand-in for the backend's
/// documents table, which makes Cloud Tasks' at-least-once delivery do the work once.
///
/// Keyed on the document, not the task, so that a document enqueued twice (a double submit, a
/// re-run backfill) is processed once too; key on the task name instead when one document may
/// legitimately be processed again by a new task. In a database the claim is one conditional
/// update, e.g. `UPDATE documents SET state = 'processing', claimed_at = now() WHERE id = $1
/// AND (state = 'pending' OR (state = 'processing' AND claimed_at < now() - interval '15
/// minutes'))`, which also frees claims left by a crashed instance; this in-memory map covers
/// one process, where a claim is freed when its delivery ends.
#[derive(Clone, Default)]
pub struct Documents {
    states: Arc<Mutex<HashMap<Uuid, DocumentState>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocumentState {
    Processing,
    Finished,
}

impl Documents {
    /// Runs `work` unless the document is finished (answers `Done`: a duplicate delivery) or
    /// another delivery is processing it right now (answers retry later: Cloud Tasks brings it
    /// back, and by then the document is finished or its claim was freed).
    pub async fn process_once(
        &self,
        task: &CloudTask<ProcessDocumentPayload>,
        work: impl Future<Output = TaskOutcome>,
    ) -> TaskOutcome {
        let document = task.payload.document_id;
        let Some(claim) = self.claim(document) else {
            return match self.state(document) {
                Some(DocumentState::Finished) => {
                    tracing::info!(%document, task = %task.context.task_name,
                        attempt = task.context.attempt(), "already processed; duplicate delivery");
                    TaskOutcome::Done
                }
                _ => {
                    tracing::info!(%document, task = %task.context.task_name,
                        "another delivery is processing this document; retry later");
                    TaskOutcome::retry_later()
                }
            };
        };
        let outcome = work.await;
        if outcome.completes_task() {
            claim.finish();
        }
        outcome
    }

    /// Whether the document's processing finished (done or given up).
    pub fn is_finished(&self, document: Uuid) -> bool {
        self.state(document) == Some(DocumentState::Finished)
    }

    fn state(&self, document: Uuid) -> Option<DocumentState> {
        self.lock().get(&document).copied()
    }

    fn claim(&self, document: Uuid) -> Option<Claim<'_>> {
        let mut states = self.lock();
        if states.contains_key(&document) {
            return None;
        }
        states.insert(document, DocumentState::Processing);
        Some(Claim {
            documents: self,
            document,
            finished: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, DocumentState>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A document being processed; freed when dropped unfinished (failed, panicked, or the
/// delivery was cancelled), so that a retry can claim it.
struct Claim<'a> {
    documents: &'a Documents,
    document: Uuid,
    finished: bool,
}

impl Claim<'_> {
    fn finish(mut self) {
        self.documents
            .lock()
            .insert(self.document, DocumentState::Finished);
        self.finished = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.documents.lock().remove(&self.document);
        }
    }
}

#[derive(Deserialize)]
struct Upload {
    filename: String,
}

/// The upload route, in a server span that continues the caller's trace (its `traceparent`),
/// so the enqueue, and through the task every delivery, belong to the upload's trace.
async fn upload<P: Processor>(
    State(app): State<App<P>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = tracing::info_span!(
        "upload",
        otel.name = format!("POST {UPLOAD_PATH}"),
        otel.kind = "server",
        trace_id = tracing::field::Empty,
    );
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(parent) =
        text(TRACEPARENT_HEADER).and_then(|value| parse_traceparent(value, text(TRACESTATE_HEADER)))
        && let Err(error) = span.set_parent(Context::new().with_remote_span_context(parent))
    {
        tracing::warn!(%error, "cannot continue the caller's trace");
    }
    span.record("trace_id", tracing::field::display(trace_id(&span)));
    enqueue_upload(app, body).instrument(span).await
}

/// The trace `span` belongs to.
pub fn trace_id(span: &tracing::Span) -> opentelemetry::trace::TraceId {
    span.context().span().span_context().trace_id()
}

async fn enqueue_upload<P: Processor>(app: App<P>, body: Bytes) -> Response {
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

fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}
