//! The backend's two routes, shared by this example's `main.rs` and by `cloud-tasks demo` (which
//! includes this file), so the demo exercises the handler a backend would deploy.
//!
//! - `POST /api/documents` with `{"filename": "..."}`: the upload endpoint. It enqueues a
//!   document-processing task and answers 202 with the document ID and task name.
//! - `POST /api/tasks/process-document`: the task handler Cloud Tasks calls. The `CloudTask`
//!   extractor verifies the OIDC token, reads the `X-CloudTasks-*` headers and the JSON body
//!   before the handler runs; the handler processes the document once ([`Documents`]) with a
//!   [`Processor`] and answers with its `TaskOutcome`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cloud_tasks::receiver::{CloudTask, OidcVerifier, TaskOutcome};
use cloud_tasks::{CloudTasksClient, PROCESS_DOCUMENT_PATH, ProcessDocumentPayload, Uuid};
use serde::Deserialize;

/// Path of the upload endpoint.
pub const UPLOAD_PATH: &str = "/api/documents";

/// The work done for a verified delivery: the application's part.
pub trait Processor: Send + Sync + 'static {
    /// Processes one document. [`Documents::process_once`] calls it only once the delivery holds
    /// the document's claim: at most once at a time per document, and not again once it
    /// answered `Done` or `GiveUp`.
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

/// The task route: the extractor has verified everything; this is the processing.
async fn process_document<P: Processor>(
    State(app): State<App<P>>,
    task: CloudTask<ProcessDocumentPayload>,
) -> TaskOutcome {
    app.documents
        .process_once(task.payload.document_id, &task.context.task_name, || {
            app.processor.process(&task)
        })
        .await
}

/// How long a claim keeps a document from other deliveries. Longer than any delivery can run:
/// Cloud Tasks waits at most 30 minutes for an answer (the maximum dispatch deadline; the client
/// sets 10), and `infrastructure/terraform`'s Cloud Run request timeout defaults to 15. A claim
/// that expired while its delivery still worked would let a retry do the work a second time;
/// raise this with a request timeout above it.
pub const CLAIM_TTL: Duration = Duration::from_secs(35 * 60);

/// Default of [`Documents::with_capacity`].
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Each document's processing state, keyed by document ID: the stand-in for the backend's
/// documents table, which makes Cloud Tasks' at-least-once delivery do the work once.
///
/// Keyed on the document, not the task, so that a document enqueued twice (a double submit, a
/// re-run backfill) is processed once too; key on the task name instead when one document may
/// legitimately be processed again by a new task. `docs/RECEIVING.md` has the same claim as SQL
/// for a real database; this in-memory table covers one process, and remembers at most
/// [`Documents::with_capacity`] documents (the oldest finished ones are forgotten first).
#[derive(Clone)]
pub struct Documents {
    table: Arc<Mutex<Table>>,
    claim_ttl: Duration,
    capacity: usize,
}

impl Default for Documents {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

#[derive(Default)]
struct Table {
    states: HashMap<Uuid, DocumentState>,
    /// Finished documents, oldest first: the first forgotten when the table is full.
    finished: VecDeque<Uuid>,
    /// Identifies each claim, so that only its holder finishes or releases it.
    last_claim: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocumentState {
    Processing { claim: u64, since: Instant },
    Finished,
}

/// What [`Documents::claim`] found.
enum Claimed<'a> {
    Won(Claim<'a>),
    Finished,
    Busy,
    Full,
}

impl Documents {
    /// A table remembering at most `capacity` documents. Past it, the oldest finished document
    /// is forgotten (a duplicate of it arriving later would be processed again); when every
    /// remembered document is being processed, new deliveries are answered retry later.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            table: Arc::default(),
            claim_ttl: CLAIM_TTL,
            capacity,
        }
    }

    /// Claims expire after `ttl` instead of [`CLAIM_TTL`].
    pub fn with_claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// Runs `work` once this delivery holds the document's claim, unless the document is
    /// finished (answers `Done`: a duplicate delivery) or another delivery holds the claim
    /// (answers retry later: Cloud Tasks brings it back, and by then the document is finished
    /// or its claim was released). `work` is not even called before the claim is won.
    ///
    /// Work that does not complete the task (retry later) releases the claim, as does a
    /// delivery cut off or panicking mid-work. Finishing counts only while this delivery still
    /// holds the claim; if it expired and another delivery took the document over, the answer
    /// is retry later, and the retry finds the other delivery's result.
    pub async fn process_once<W, F>(&self, document: Uuid, task: &str, work: W) -> TaskOutcome
    where
        W: FnOnce() -> F,
        F: Future<Output = TaskOutcome>,
    {
        let claim = match self.claim(document) {
            Claimed::Won(claim) => claim,
            Claimed::Finished => {
                tracing::info!(%document, task, "already processed; duplicate delivery");
                return TaskOutcome::Done;
            }
            Claimed::Busy => {
                tracing::info!(%document, task,
                    "another delivery is processing this document; retry later");
                return TaskOutcome::retry_later();
            }
            Claimed::Full => {
                tracing::warn!(%document, task, capacity = self.capacity,
                    "every remembered document is being processed; retry later");
                return TaskOutcome::retry_later();
            }
        };
        let outcome = work().await;
        if !outcome.completes_task() {
            return outcome;
        }
        if claim.finish() {
            outcome
        } else {
            tracing::warn!(%document, task, claim_ttl = ?self.claim_ttl,
                "the claim expired while the work ran and another delivery took the document \
                 over; answering retry later");
            TaskOutcome::retry_later()
        }
    }

    /// Whether the document's processing finished (done or given up).
    pub fn is_finished(&self, document: Uuid) -> bool {
        self.lock().states.get(&document) == Some(&DocumentState::Finished)
    }

    /// How many documents the table remembers.
    pub fn len(&self) -> usize {
        self.lock().states.len()
    }

    fn claim(&self, document: Uuid) -> Claimed<'_> {
        let mut table = self.lock();
        match table.states.get(&document) {
            Some(DocumentState::Finished) => return Claimed::Finished,
            Some(DocumentState::Processing { since, .. }) if since.elapsed() < self.claim_ttl => {
                return Claimed::Busy;
            }
            // An expired claim: its delivery is over, whatever it did.
            Some(DocumentState::Processing { .. }) => {}
            None if table.states.len() >= self.capacity => {
                let Some(oldest) = table.finished.pop_front() else {
                    return Claimed::Full;
                };
                table.states.remove(&oldest);
            }
            None => {}
        }
        table.last_claim += 1;
        let claim = table.last_claim;
        table.states.insert(
            document,
            DocumentState::Processing {
                claim,
                since: Instant::now(),
            },
        );
        Claimed::Won(Claim {
            documents: self,
            document,
            claim,
            released: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A document claimed by one delivery; released when dropped unfinished (the work failed,
/// panicked, or the delivery was cut off), so that a retry can claim it.
struct Claim<'a> {
    documents: &'a Documents,
    document: Uuid,
    claim: u64,
    released: bool,
}

impl Claim<'_> {
    /// Marks the document finished if this claim still holds it; false if it was taken over.
    fn finish(mut self) -> bool {
        self.released = true;
        let mut table = self.documents.lock();
        if !self.holds(&table) {
            return false;
        }
        table.states.insert(self.document, DocumentState::Finished);
        table.finished.push_back(self.document);
        true
    }

    fn holds(&self, table: &Table) -> bool {
        matches!(
            table.states.get(&self.document),
            Some(DocumentState::Processing { claim, .. }) if *claim == self.claim
        )
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let mut table = self.documents.lock();
        // Another delivery's claim, taken over after this one expired, is not this one's to free.
        if self.holds(&table) {
            table.states.remove(&self.document);
        }
    }
}

#[derive(Deserialize)]
struct Upload {
    filename: String,
}

async fn upload<P: Processor>(State(app): State<App<P>>, body: Bytes) -> Response {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    /// Work that counts its runs and answers `outcome`.
    async fn counted(runs: &AtomicUsize, outcome: TaskOutcome) -> TaskOutcome {
        runs.fetch_add(1, Ordering::SeqCst);
        outcome
    }

    #[tokio::test]
    async fn failed_work_releases_the_claim_and_finished_work_is_not_started_again() {
        let documents = Documents::default();
        let document = Uuid::new_v4();
        let runs = AtomicUsize::new(0);
        let failed = documents
            .process_once(document, "t", || counted(&runs, TaskOutcome::retry_later()))
            .await;
        assert_eq!(failed, TaskOutcome::retry_later());
        assert!(!documents.is_finished(document));
        let done = documents
            .process_once(document, "t", || counted(&runs, TaskOutcome::Done))
            .await;
        assert_eq!(done, TaskOutcome::Done);
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the retry could claim it");
        assert!(documents.is_finished(document));

        // A duplicate: answered Done, and the work is not even called.
        let duplicate = documents
            .process_once(document, "t", || -> std::future::Ready<TaskOutcome> {
                panic!("work started for a finished document")
            })
            .await;
        assert_eq!(duplicate, TaskOutcome::Done);
    }

    #[tokio::test]
    async fn a_document_being_processed_is_not_started_by_another_delivery() {
        let documents = Documents::default();
        let document = Uuid::new_v4();
        let (release, released) = oneshot::channel::<()>();
        let first = tokio::spawn({
            let documents = documents.clone();
            async move {
                documents
                    .process_once(document, "first", || async {
                        released.await.ok();
                        TaskOutcome::Done
                    })
                    .await
            }
        });
        while documents.len() == 0 {
            tokio::task::yield_now().await;
        }
        let second = documents
            .process_once(document, "second", || -> std::future::Ready<TaskOutcome> {
                panic!("work started while another delivery holds the claim")
            })
            .await;
        assert_eq!(second, TaskOutcome::retry_later());
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), TaskOutcome::Done);
        assert!(documents.is_finished(document));
    }

    #[tokio::test]
    async fn finishing_and_releasing_belong_to_the_claim_holder() {
        // Every claim expires at once, so each delivery takes the document over.
        let documents = Documents::default().with_claim_ttl(Duration::ZERO);
        let document = Uuid::new_v4();
        let (release_first, first_released) = oneshot::channel::<TaskOutcome>();
        let first = tokio::spawn({
            let documents = documents.clone();
            async move {
                documents
                    .process_once(document, "first", || async {
                        first_released.await.unwrap()
                    })
                    .await
            }
        });
        while documents.len() == 0 {
            tokio::task::yield_now().await;
        }
        // The second delivery takes the expired claim over and holds it while the first fails:
        // the first's release must not free the second's claim.
        let (release_second, second_released) = oneshot::channel::<()>();
        let second = tokio::spawn({
            let documents = documents.clone();
            async move {
                documents
                    .process_once(document, "second", || async {
                        second_released.await.ok();
                        TaskOutcome::Done
                    })
                    .await
            }
        });
        tokio::task::yield_now().await;
        release_first.send(TaskOutcome::retry_later()).unwrap();
        assert_eq!(first.await.unwrap(), TaskOutcome::retry_later());
        release_second.send(()).unwrap();
        assert_eq!(
            second.await.unwrap(),
            TaskOutcome::Done,
            "still the holder when it finished"
        );
        assert!(documents.is_finished(document));
    }

    #[tokio::test]
    async fn a_delivery_whose_claim_was_taken_over_does_not_finish_the_document() {
        let documents = Documents::default().with_claim_ttl(Duration::ZERO);
        let document = Uuid::new_v4();
        let (release_first, first_released) = oneshot::channel::<()>();
        let first = tokio::spawn({
            let documents = documents.clone();
            async move {
                documents
                    .process_once(document, "first", || async {
                        first_released.await.ok();
                        TaskOutcome::Done
                    })
                    .await
            }
        });
        while documents.len() == 0 {
            tokio::task::yield_now().await;
        }
        // Another delivery takes the expired claim and fails: the document is not finished.
        let runs = AtomicUsize::new(0);
        let second = documents
            .process_once(document, "second", || {
                counted(&runs, TaskOutcome::retry_later())
            })
            .await;
        assert_eq!(second, TaskOutcome::retry_later());
        release_first.send(()).unwrap();
        assert_eq!(
            first.await.unwrap(),
            TaskOutcome::retry_later(),
            "its claim was taken over: its finish does not count"
        );
        assert!(!documents.is_finished(document));
    }

    #[tokio::test]
    async fn memory_is_bounded_by_forgetting_the_oldest_finished_documents() {
        let documents = Documents::with_capacity(2);
        let runs = AtomicUsize::new(0);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            let outcome = documents
                .process_once(*id, "t", || counted(&runs, TaskOutcome::Done))
                .await;
            assert_eq!(outcome, TaskOutcome::Done);
        }
        assert_eq!(documents.len(), 2);
        assert!(!documents.is_finished(ids[0]), "the oldest was forgotten");
        assert!(documents.is_finished(ids[1]) && documents.is_finished(ids[2]));

        // Full of documents being processed: a new one waits rather than growing the table.
        let busy = Documents::with_capacity(1);
        let (release, released) = oneshot::channel::<()>();
        let held = tokio::spawn({
            let busy = busy.clone();
            async move {
                busy.process_once(Uuid::new_v4(), "held", || async {
                    released.await.ok();
                    TaskOutcome::Done
                })
                .await
            }
        });
        while busy.len() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = busy
            .process_once(
                Uuid::new_v4(),
                "new",
                || -> std::future::Ready<TaskOutcome> { panic!("work started past the capacity") },
            )
            .await;
        assert_eq!(refused, TaskOutcome::retry_later());
        assert_eq!(busy.len(), 1);
        release.send(()).unwrap();
        assert_eq!(held.await.unwrap(), TaskOutcome::Done);
    }

    #[test]
    fn a_claim_outlives_the_longest_dispatch_deadline() {
        assert!(CLAIM_TTL > Duration::from_secs(30 * 60));
    }
}
