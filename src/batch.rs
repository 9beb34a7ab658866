//! Bulk enqueue: `BatchCreateTasks` (up to 100 tasks a call, several calls in flight on the one
//! HTTP/2 channel, following the long-running operation), or one `CreateTask` per task.
//!
//! A batch is not atomic: each task gets its own `Result<Enqueued, Error>`, the same outcome a
//! single [`CloudTasksClient::enqueue`] returns, and a failed task (or a failed batch) does not
//! stop the others. Each batch carries a fresh UUIDv4 `request_id`, created
//! before the first attempt, so a retry of one batch attempt (`send_batch_once`) with the same
//! request is not applied twice by Cloud Tasks.
//!
//! Design choices:
//! - Bounded concurrency is a `tokio::task::JoinSet` the enqueuer never lets grow past
//!   `concurrency`: no extra dependency, and the calls run on the runtime's workers while the
//!   caller keeps reading its input.
//! - Push-based ([`BatchEnqueuer::push`] returns what finished meanwhile) rather than a stream
//!   adapter, so a caller reading a file line by line holds at most `concurrency` batches, and
//!   needs neither `futures` nor a callback.
//! - Each task is validated locally first (`HttpTask::into_proto`), so one bad task fails alone
//!   instead of making Cloud Tasks reject its whole batch.
//! - Tasks of a batch that failed as a whole each get a clone of its error (`Error` is cheap to
//!   clone: its causes are shared), so every task's outcome keeps `source()`.
//! - Retries follow the crate's one policy (`retry.rs`): a batch is idempotent thanks to its
//!   `request_id`, and polling an operation is a read, so both are retried on transient
//!   failures; per-task mode retries exactly as `enqueue` does. A batch that still
//!   fails reports each of its tasks failed, with [`Error::task_may_exist`] telling whether they
//!   may exist anyway; with de-duplicated (named) tasks, enqueuing them again is safe.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::{CallOptions, CloudTasksClient, Enqueued};
use crate::error::Error;
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::google::longrunning::{GetOperationRequest, operation};
use crate::proto::{
    BatchCreateTasksMetadata, BatchCreateTasksRequest, BatchCreateTasksResponse, CreateTaskRequest,
    Operation, Task,
};
use crate::retry::{Attempt, Idempotency};
use crate::task::NewTask;
#[cfg(doc)]
use crate::{DocumentTask, HttpTask, ProcessDocumentPayload};

/// The most tasks one `BatchCreateTasks` call may carry.
pub const MAX_BATCH_SIZE: usize = 100;

/// How long a batch's long-running operation may take before its tasks are reported as
/// [`Error::Timeout`] (default of [`BatchOptions::with_operation_timeout`]).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// First and longest wait between two `GetOperation` polls.
const FIRST_POLL_DELAY: Duration = Duration::from_millis(100);
const MAX_POLL_DELAY: Duration = Duration::from_secs(5);

const METADATA_TYPE: &str = "type.googleapis.com/google.cloud.tasks.v2.BatchCreateTasksMetadata";
const RESPONSE_TYPE: &str = "type.googleapis.com/google.cloud.tasks.v2.BatchCreateTasksResponse";

/// How tasks are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnqueueMode {
    /// `BatchCreateTasks` with up to [`MAX_BATCH_SIZE`] tasks a call (the default).
    Batch,
    /// One `CreateTask` call per task, for servers or queues where batching is not wanted.
    PerTask,
}

/// Options of a bulk enqueue.
///
/// ```
/// use cloud_tasks::{BatchOptions, EnqueueMode};
///
/// let options = BatchOptions::new()
///     .with_concurrency(16)
///     .with_dedupe(true)
///     .with_mode(EnqueueMode::Batch);
/// assert_eq!(options.concurrency(), 16);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct BatchOptions {
    mode: EnqueueMode,
    concurrency: usize,
    batch_size: usize,
    dedupe: bool,
    operation_timeout: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchOptions {
    /// Batches of 100, 8 calls in flight, documents not de-duplicated.
    pub const fn new() -> Self {
        Self {
            mode: EnqueueMode::Batch,
            concurrency: 8,
            batch_size: MAX_BATCH_SIZE,
            dedupe: false,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }

    /// Batches or one call per task.
    pub const fn with_mode(mut self, mode: EnqueueMode) -> Self {
        self.mode = mode;
        self
    }

    /// How many calls (batches, or single tasks) may be in flight at once; at least 1.
    pub const fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = if concurrency == 0 { 1 } else { concurrency };
        self
    }

    /// Tasks per `BatchCreateTasks` call, 1 to [`MAX_BATCH_SIZE`] (values outside are clamped).
    pub const fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = if batch_size == 0 {
            1
        } else if batch_size > MAX_BATCH_SIZE {
            MAX_BATCH_SIZE
        } else {
            batch_size
        };
        self
    }

    /// Names each unnamed document's task after the document, as
    /// [`DocumentTask::deduplicated`] does, so a document that was already enqueued within
    /// about an hour is reported as [`Enqueued::AlreadyExists`] instead of being enqueued twice.
    /// Applies to [`DocumentTask`]s, not to [`HttpTask`]s, which carry their own ID if they
    /// want one.
    pub const fn with_dedupe(mut self, dedupe: bool) -> Self {
        self.dedupe = dedupe;
        self
    }

    /// How long to follow a batch's long-running operation before giving up on it.
    pub const fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Batches or one call per task.
    pub const fn mode(&self) -> EnqueueMode {
        self.mode
    }

    /// Calls in flight at once.
    pub const fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// Tasks per batch.
    pub const fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Whether document tasks are named after the document.
    pub const fn dedupe(&self) -> bool {
        self.dedupe
    }
}

/// One task's outcome in a [`BatchEnqueuer`], with the key the caller pushed it with.
type Keyed<K> = (K, Result<Enqueued, Error>);

/// Enqueues a stream of tasks with bounded concurrency; memory stays bounded by
/// `concurrency x batch size` tasks however many are pushed.
///
/// [`BatchEnqueuer::push`] returns the outcomes of the calls that finished meanwhile, each with
/// the key it was pushed with, and waits when `concurrency` calls are in flight;
/// [`BatchEnqueuer::finish`] sends the rest and returns the remaining outcomes. Every pushed
/// task's outcome is returned exactly once. Dropping the enqueuer abandons the calls in flight:
/// their tasks may or may not exist.
///
/// ```no_run
/// # async fn run(client: cloud_tasks::CloudTasksClient) {
/// use cloud_tasks::{BatchOptions, DocumentTask, Uuid};
///
/// let mut enqueuer = client.batch_enqueuer(BatchOptions::new().with_dedupe(true));
/// let mut outcomes = Vec::new();
/// for line in 0..1000_u32 {
///     let document = DocumentTask::new(Uuid::new_v4(), format!("scan-{line}.pdf"));
///     outcomes.extend(enqueuer.push(line, document).await);
/// }
/// outcomes.extend(enqueuer.finish().await);
/// assert_eq!(outcomes.len(), 1000);
/// for (line, outcome) in outcomes {
///     if let Err(error) = outcome {
///         eprintln!("line {line}: {error}");
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct BatchEnqueuer<K> {
    client: CloudTasksClient,
    options: BatchOptions,
    pending: Vec<(K, Task)>,
    in_flight: JoinSet<Vec<Keyed<K>>>,
}

impl<K: Send + 'static> BatchEnqueuer<K> {
    /// Checks `task` (a [`DocumentTask`] or an [`HttpTask`]) locally and queues it; a task
    /// that breaks a Cloud Tasks rule fails alone with [`Error::InvalidTask`]. A document is
    /// the same request [`CloudTasksClient::enqueue`] sends, named after the document when the
    /// options ask for de-duplication. Sends a call when a batch is full (in per-task mode, at
    /// once), first waiting while `concurrency` calls are in flight.
    ///
    /// Returns the outcomes of tasks whose calls finished meanwhile (possibly none), each with
    /// its key.
    pub async fn push(
        &mut self,
        key: K,
        task: impl Into<NewTask>,
    ) -> Vec<(K, Result<Enqueued, Error>)> {
        let proto = task
            .into()
            .into_http_task(self.options.dedupe)
            .and_then(|task| self.client.task_proto(task));
        self.push_proto(key, proto).await
    }

    /// Sends what is queued and waits for every call in flight; returns the remaining
    /// outcomes, each with its key.
    pub async fn finish(mut self) -> Vec<(K, Result<Enqueued, Error>)> {
        let mut done = Vec::new();
        if !self.pending.is_empty() {
            self.send_pending(&mut done).await;
        }
        while let Some(joined) = self.in_flight.join_next().await {
            done.extend(unwrap_joined(joined));
        }
        done
    }

    /// Calls in flight right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    async fn push_proto(&mut self, key: K, task: Result<Task, Error>) -> Vec<Keyed<K>> {
        let mut done = Vec::new();
        match task {
            Ok(task) => self.pending.push((key, task)),
            Err(error) => done.push((key, Err(error))),
        }
        let full = match self.options.mode {
            EnqueueMode::Batch => self.options.batch_size,
            EnqueueMode::PerTask => 1,
        };
        if self.pending.len() >= full {
            self.send_pending(&mut done).await;
        }
        while let Some(joined) = self.in_flight.try_join_next() {
            done.extend(unwrap_joined(joined));
        }
        done
    }

    async fn send_pending(&mut self, done: &mut Vec<Keyed<K>>) {
        while self.in_flight.len() >= self.options.concurrency {
            if let Some(joined) = self.in_flight.join_next().await {
                done.extend(unwrap_joined(joined));
            }
        }
        let items = std::mem::take(&mut self.pending);
        let client = self.client.clone();
        match self.options.mode {
            EnqueueMode::Batch => {
                let timeout = self.options.operation_timeout;
                self.in_flight
                    .spawn(async move { client.create_batch(items, timeout).await });
            }
            EnqueueMode::PerTask => {
                self.in_flight.spawn(async move {
                    let mut done = Vec::with_capacity(items.len());
                    for (key, task) in items {
                        // The call `enqueue` makes, retries included.
                        let outcome = client.enqueue_validated(task, &CallOptions::new()).await;
                        done.push((key, outcome));
                    }
                    done
                });
            }
        }
    }
}

fn unwrap_joined<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(value) => value,
        // A panic in a call is a bug: let it surface rather than lose the tasks' outcomes.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("an enqueue call was cancelled while its enqueuer was alive: {error}"),
    }
}

/// # Batch enqueue
impl CloudTasksClient {
    /// A [`BatchEnqueuer`] for streaming many tasks into this client's queue; `K` is whatever
    /// the caller wants back with each outcome (a line number, a document ID).
    pub fn batch_enqueuer<K: Send + 'static>(&self, options: BatchOptions) -> BatchEnqueuer<K> {
        BatchEnqueuer {
            client: self.clone(),
            pending: Vec::with_capacity(options.batch_size),
            options,
            in_flight: JoinSet::new(),
        }
    }

    /// Enqueues every task (each a [`DocumentTask`], an [`HttpTask`] or a
    /// [`ProcessDocumentPayload`]), as [`CloudTasksClient::enqueue`] would one by one, in
    /// batches (or per task) as `options` say.
    ///
    /// Returns one outcome per task, in input order: the same `Result<Enqueued, Error>` a
    /// single enqueue returns. Partial failure is normal: check each outcome. A task that breaks
    /// a Cloud Tasks rule fails alone with [`Error::InvalidTask`]. With
    /// [`BatchOptions::with_dedupe`], running it again after an interruption creates only the
    /// missing tasks and reports the others as [`Enqueued::AlreadyExists`].
    pub async fn enqueue_all<T: Into<NewTask>>(
        &self,
        tasks: impl IntoIterator<Item = T>,
        options: BatchOptions,
    ) -> Vec<Result<Enqueued, Error>> {
        let mut enqueuer = self.batch_enqueuer(options);
        let mut done = Vec::new();
        for (index, task) in tasks.into_iter().enumerate() {
            done.extend(enqueuer.push(index, task).await);
        }
        done.extend(enqueuer.finish().await);
        done.sort_unstable_by_key(|(index, _)| *index);
        done.into_iter().map(|(_, outcome)| outcome).collect()
    }

    /// One `BatchCreateTasks` attempt: sends `request` and returns the operation as first
    /// answered (maybe not done yet). A retry must resend the same request, `request_id`
    /// included, so Cloud Tasks does not apply the batch twice.
    ///
    /// # Errors
    /// What the call failed with, for the batch as a whole.
    async fn send_batch_once(
        &self,
        request: BatchCreateTasksRequest,
        attempt: Attempt,
    ) -> Result<Operation, Error> {
        let request = self.prepare(request, attempt).await?;
        let mut stub = self.raw_stub();
        self.map_response(stub.batch_create_tasks(request).await)
    }

    /// One `GetOperation` attempt for an operation of this client's queue.
    async fn get_operation_once(&self, name: &str, attempt: Attempt) -> Result<Operation, Error> {
        let mut request = self
            .prepare(
                GetOperationRequest {
                    name: name.to_owned(),
                },
                attempt,
            )
            .await?;
        request.metadata_mut().insert(
            "x-goog-request-params",
            crate::auth::routing_value("name", name),
        );
        let mut operations = OperationsClient::new(self.channel());
        self.map_response(operations.get_operation(request).await)
    }

    /// Polls the operation with a growing delay until it is done or `timeout` has passed.
    async fn wait_operation(
        &self,
        mut operation: Operation,
        timeout: Duration,
    ) -> Result<Operation, Error> {
        let started = Instant::now();
        let mut delay = FIRST_POLL_DELAY;
        while !operation.done {
            if started.elapsed() + delay > timeout {
                return Err(Error::Timeout {
                    after: timeout,
                    request_sent: true,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(MAX_POLL_DELAY);
            // Reading an operation is idempotent.
            operation = self
                .with_retries(&CallOptions::new(), Idempotency::Idempotent, |attempt| {
                    self.get_operation_once(&operation.name, attempt)
                })
                .await
                .result?;
        }
        Ok(operation)
    }

    async fn create_batch<K>(&self, items: Vec<(K, Task)>, timeout: Duration) -> Vec<Keyed<K>> {
        let queue = self.queue_path();
        let (keys, tasks): (Vec<K>, Vec<Task>) = items.into_iter().unzip();
        let names: Vec<String> = tasks.iter().map(|task| task.name.clone()).collect();
        let request = BatchCreateTasksRequest {
            parent: queue.to_owned(),
            requests: tasks
                .into_iter()
                .map(|task| CreateTaskRequest {
                    parent: queue.to_owned(),
                    task: Some(task),
                    ..CreateTaskRequest::default()
                })
                .collect(),
            request_id: Uuid::new_v4().to_string(),
        };
        let request_id = request.request_id.clone();
        let started = Instant::now();
        // The request_id makes a resent batch a no-op on Cloud Tasks, so the batch is retried
        // like a named task, with the same request (request_id included) each time.
        let sent = self
            .with_retries(&CallOptions::new(), Idempotency::Idempotent, |attempt| {
                self.send_batch_once(request.clone(), attempt)
            })
            .await;
        let operation = match sent.result {
            Ok(operation) => self.wait_operation(operation, timeout).await,
            Err(error) => Err(error),
        };
        let outcomes = match operation {
            Ok(operation) => self.batch_outcomes(operation, &names),
            Err(error) => {
                tracing::warn!(queue, %request_id, %error, tasks = names.len(), "BatchCreateTasks failed");
                names.iter().map(|_| Err(error.clone())).collect()
            }
        };
        tracing::debug!(
            queue,
            %request_id,
            tasks = names.len(),
            latency_ms = started.elapsed().as_millis(),
            "BatchCreateTasks finished"
        );
        keys.into_iter().zip(outcomes).collect()
    }

    /// Each request's outcome from a finished operation.
    ///
    /// `failed_requests` is keyed by the index in the request; the response lists the created
    /// tasks. Named tasks are matched by name; unnamed ones take the remaining created tasks in
    /// request order (the proto does not promise an order, so a server that reorders unnamed
    /// tasks would pair them up differently, but each would still be reported created).
    fn batch_outcomes(
        &self,
        operation: Operation,
        names: &[String],
    ) -> Vec<Result<Enqueued, Error>> {
        let metadata = operation
            .metadata
            .filter(|any| any.type_url == METADATA_TYPE)
            .and_then(|any| BatchCreateTasksMetadata::decode(any.value.as_slice()).ok())
            .unwrap_or_default();
        let mut failed = metadata.failed_requests;
        let (created, batch_error) = match operation.result {
            Some(operation::Result::Response(any)) if any.type_url == RESPONSE_TYPE => {
                match BatchCreateTasksResponse::decode(any.value.as_slice()) {
                    Ok(response) => (response.tasks, None),
                    Err(error) => (
                        Vec::new(),
                        Some(tonic::Status::internal(format!(
                            "cannot decode the BatchCreateTasks response: {error}"
                        ))),
                    ),
                }
            }
            Some(operation::Result::Response(any)) => (
                Vec::new(),
                Some(tonic::Status::internal(format!(
                    "BatchCreateTasks answered with an unexpected {}",
                    any.type_url
                ))),
            ),
            Some(operation::Result::Error(status)) => (Vec::new(), Some(rpc_status(status))),
            None => (Vec::new(), None),
        };
        let batch_error = batch_error.map(|status| self.status_error(status));

        let mut by_name: HashMap<String, Task> = HashMap::new();
        let mut unnamed: VecDeque<Task> = VecDeque::new();
        let requested: std::collections::HashSet<&str> = names
            .iter()
            .filter(|name| !name.is_empty())
            .map(String::as_str)
            .collect();
        for task in created {
            if requested.contains(task.name.as_str()) {
                by_name.insert(task.name.clone(), task);
            } else {
                unnamed.push_back(task);
            }
        }
        names
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let failure = i32::try_from(index)
                    .ok()
                    .and_then(|index| failed.remove(&index));
                if let Some(status) = failure {
                    let error = self.status_error(rpc_status(status));
                    // As for a single task: ALREADY_EXISTS is an outcome for a named task.
                    return if error.is_already_exists() && !name.is_empty() {
                        Ok(Enqueued::AlreadyExists {
                            task_name: name.clone(),
                        })
                    } else {
                        Err(error)
                    };
                }
                if let Some(error) = &batch_error {
                    return Err(error.clone());
                }
                let task = if name.is_empty() {
                    unnamed.pop_front()
                } else {
                    by_name.remove(name)
                };
                task.map_or_else(
                    || {
                        Err(self.status_error(tonic::Status::unknown(
                            "BatchCreateTasks finished without reporting this task as created \
                             or failed; the task may or may not exist",
                        )))
                    },
                    |task| Ok(Enqueued::Created(Box::new(task))),
                )
            })
            .collect()
    }
}

/// A per-task or whole-batch status of an operation as a transport status, details included
/// (as the encoded `google.rpc.Status` the `grpc-status-details-bin` trailer carries).
fn rpc_status(status: crate::proto::google::rpc::Status) -> tonic::Status {
    let code = tonic::Code::from_i32(status.code);
    if status.details.is_empty() {
        tonic::Status::new(code, status.message)
    } else {
        let details = bytes::Bytes::from(status.encode_to_vec());
        tonic::Status::with_details(code, status.message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_clamped() {
        let options = BatchOptions::new()
            .with_batch_size(1000)
            .with_concurrency(0);
        assert_eq!(options.batch_size(), MAX_BATCH_SIZE);
        assert_eq!(options.concurrency(), 1);
        assert_eq!(BatchOptions::new().with_batch_size(0).batch_size(), 1);
    }
}
