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
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::{CallOptions, CloudTasksClient, Enqueued};
use crate::error::{Code, Error};
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::google::longrunning::{GetOperationRequest, operation};
use crate::proto::{
    BatchCreateTasksMetadata, BatchCreateTasksRequest, BatchCreateTasksResponse, CreateTaskRequest,
    MessageType, Operation, Task,
};
use crate::rate::{Pacer, RateLimit};
use crate::retry::{Attempt, Idempotency, RetryPolicy};
use crate::task::NewTask;
#[cfg(doc)]
use crate::{DocumentTask, HttpTask, ProcessDocumentPayload};

/// The most tasks one `BatchCreateTasks` call may carry.
pub const MAX_BATCH_SIZE: usize = 100;

/// The deadline of each bulk call (a batch, its resends and its operation's polls; or one task
/// in per-task mode) unless [`BatchOptions::with_call_options`] sets a total timeout.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Attempts of a bulk call under the client's retry policy: more than a single call's, since
/// quota refusals are expected in a backfill and the batch's deadline bounds them anyway.
const BULK_MAX_ATTEMPTS: u32 = 20;

/// The largest batch answer accepted: with the FULL view an operation returns its created
/// tasks with their bodies, up to 100 tasks of up to 100 KB each; tonic's default is 4 MB.
const MAX_BATCH_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

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
/// use std::time::Duration;
/// use cloud_tasks::{BatchOptions, CallOptions, EnqueueMode, RateLimit};
///
/// let options = BatchOptions::new()
///     .with_concurrency(16)
///     .with_dedupe(true)
///     .with_mode(EnqueueMode::Batch)
///     .with_rate_limit(RateLimit::ramp_from(500).with_ceiling(2000))
///     .with_call_options(CallOptions::new().with_total_timeout(Duration::from_secs(60)));
/// assert_eq!(options.concurrency(), 16);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct BatchOptions {
    mode: EnqueueMode,
    concurrency: usize,
    batch_size: usize,
    dedupe: bool,
    call: CallOptions,
    rate_limit: RateLimit,
    created_tasks: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchOptions {
    /// Batches of 100, 8 calls in flight, documents not de-duplicated, Cloud Tasks' 500/50/5
    /// ramp ([`RateLimit::default`]), a [`DEFAULT_BATCH_TIMEOUT`] deadline per call, outcomes
    /// without the created tasks.
    pub const fn new() -> Self {
        Self {
            mode: EnqueueMode::Batch,
            concurrency: 8,
            batch_size: MAX_BATCH_SIZE,
            dedupe: false,
            call: CallOptions::new(),
            rate_limit: RateLimit::ramp_from(crate::rate::RAMP_START),
            created_tasks: false,
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
    /// [`DocumentTask::deduplicated`] does, so a document whose task exists, or ran within
    /// about 1 hour (see there), is reported as [`Enqueued::AlreadyExists`] instead of being
    /// enqueued twice.
    /// Applies to [`DocumentTask`]s, not to [`HttpTask`]s, which carry their own ID if they
    /// want one.
    pub const fn with_dedupe(mut self, dedupe: bool) -> Self {
        self.dedupe = dedupe;
        self
    }

    /// How fast tasks are created, counted in tasks: Cloud Tasks' ramp by default,
    /// [`RateLimit::fixed`] or [`RateLimit::none`] (emulators, tests). RESOURCE_EXHAUSTED
    /// slows any of them down and they recover gradually.
    pub const fn with_rate_limit(mut self, rate_limit: RateLimit) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    /// Deadlines and retry policy of each call. The total timeout is the one deadline of a
    /// batch: its sending, resends (after RESOURCE_EXHAUSTED too) and operation polls all fit
    /// in it ([`DEFAULT_BATCH_TIMEOUT`] if unset; in per-task mode, of each task's call). The
    /// attempt timeout bounds each RPC; the retry policy defaults to the client's, with up to
    /// 20 attempts within the deadline.
    pub fn with_call_options(mut self, options: CallOptions) -> Self {
        self.call = options;
        self
    }

    /// Whether each [`Enqueued::Created`] outcome carries the created task (its HTTP request
    /// included, without the body, as Cloud Tasks' default view returns it) rather than only
    /// its name. Off by default, so that the outcomes of a large enqueue hold names, not
    /// tasks.
    pub const fn with_created_tasks(mut self, keep: bool) -> Self {
        self.created_tasks = keep;
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

    /// How fast tasks are created.
    pub const fn rate_limit(&self) -> RateLimit {
        self.rate_limit
    }
}

/// What every call of one bulk enqueue shares: its deadline, retry policy and pace.
#[derive(Debug)]
struct BulkCall {
    /// The deadline of each call, from its first send to its last answer.
    total: Duration,
    attempt_timeout: Option<Duration>,
    policy: RetryPolicy,
    pacer: Pacer,
    created_tasks: bool,
}

impl BulkCall {
    /// Call options for what is left of a deadline.
    fn until(&self, deadline: Instant) -> CallOptions {
        CallOptions {
            attempt_timeout: self.attempt_timeout,
            total_timeout: Some(deadline.saturating_duration_since(Instant::now())),
            retry_policy: Some(self.policy.clone()),
        }
    }

    /// A timeout inside the call names the call's deadline, not what was left of it.
    fn deadline_error(&self, error: Error) -> Error {
        match error {
            Error::Timeout { request_sent, .. } => Error::Timeout {
                after: self.total,
                request_sent,
            },
            other => other,
        }
    }

    /// The outcome as the caller asked for it: with or without the created task.
    fn outcome(&self, outcome: Result<Enqueued, Error>) -> Result<Enqueued, Error> {
        match outcome {
            Ok(Enqueued::Created { task_name, .. }) if !self.created_tasks => {
                Ok(Enqueued::Created {
                    task_name,
                    task: None,
                })
            }
            other => other,
        }
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
    call: Arc<BulkCall>,
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
        let mut done = self.flush().await;
        while let Some(finished) = self.next_finished().await {
            done.extend(finished);
        }
        done
    }

    /// Sends the tasks queued for a batch that is not full yet, first waiting while
    /// `concurrency` calls are in flight; returns the outcomes of calls that finished meanwhile.
    pub async fn flush(&mut self) -> Vec<(K, Result<Enqueued, Error>)> {
        let mut done = Vec::new();
        if !self.pending.is_empty() {
            self.send_pending(&mut done).await;
        }
        done
    }

    /// Waits for a call in flight to finish and returns its tasks' outcomes; `None` when no call
    /// is in flight. Cancel safe, so a caller can wait for it beside other events (more input, a
    /// signal) and handle each outcome when it is decided rather than at the next push.
    pub async fn next_finished(&mut self) -> Option<Vec<(K, Result<Enqueued, Error>)>> {
        self.in_flight.join_next().await.map(unwrap_joined)
    }

    /// Calls in flight right now, including those waiting for their turn under the rate
    /// limit.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The rate tasks may be created at now, in tasks per second: the [`RateLimit`]'s plan,
    /// or less after RESOURCE_EXHAUSTED; `None` without a limit.
    pub fn current_rate(&self) -> Option<f64> {
        self.call.pacer.current_rate()
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
        let call = self.call.clone();
        // The call waits for its turn on its own task, so a slow rate holds at most
        // `concurrency` calls' tasks, and the deadline starts when the call may go.
        match self.options.mode {
            EnqueueMode::Batch => {
                self.in_flight.spawn(async move {
                    call.pacer.acquire(items.len()).await;
                    client.create_batch(items, &call).await
                });
            }
            EnqueueMode::PerTask => {
                self.in_flight.spawn(async move {
                    let mut done = Vec::with_capacity(items.len());
                    for (key, task) in items {
                        call.pacer.acquire(1).await;
                        let options = call.until(Instant::now() + call.total);
                        // The call `enqueue` makes, retries included; its resends are paced.
                        let outcome = client
                            .enqueue_validated(task, &options, Some(&call.pacer))
                            .await
                            .map_err(|error| call.deadline_error(error));
                        done.push((key, call.outcome(outcome)));
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

/// One task's outcome after one `BatchCreateTasks` call.
#[derive(Debug)]
enum Round {
    /// Settled.
    Done(Result<Enqueued, Error>),
    /// Refused for quota in the operation's `failed_requests`: not created, so it may be sent
    /// again, in another batch.
    Exhausted(Box<Task>, Error),
}

/// # Batch enqueue
impl CloudTasksClient {
    /// A [`BatchEnqueuer`] for streaming many tasks into this client's queue; `K` is whatever
    /// the caller wants back with each outcome (a line number, a document ID).
    pub fn batch_enqueuer<K: Send + 'static>(&self, options: BatchOptions) -> BatchEnqueuer<K> {
        let call = BulkCall {
            total: options.call.total_timeout.unwrap_or(DEFAULT_BATCH_TIMEOUT),
            attempt_timeout: options.call.attempt_timeout,
            policy: options.call.retry_policy.clone().unwrap_or_else(|| {
                self.retry_policy()
                    .clone()
                    .with_max_attempts(BULK_MAX_ATTEMPTS)
            }),
            pacer: Pacer::new(options.rate_limit),
            created_tasks: options.created_tasks,
        };
        BatchEnqueuer {
            client: self.clone(),
            pending: Vec::with_capacity(options.batch_size),
            options,
            call: Arc::new(call),
            in_flight: JoinSet::new(),
        }
    }

    /// Enqueues every task (each a [`DocumentTask`], an [`HttpTask`] or a
    /// [`ProcessDocumentPayload`]), as [`CloudTasksClient::enqueue`] would one by one, in
    /// batches (or per task) as `options` say, at the pace of their [`RateLimit`].
    ///
    /// Returns one outcome per task, in input order: the same `Result<Enqueued, Error>` a
    /// single enqueue returns, carrying the created task's name (and the task itself only
    /// with [`BatchOptions::with_created_tasks`]). Partial failure is normal: check each
    /// outcome. A task that breaks a Cloud Tasks rule fails alone with
    /// [`Error::InvalidTask`]. With [`BatchOptions::with_dedupe`], running it again after an
    /// interruption creates only the missing tasks and reports the others as
    /// [`Enqueued::AlreadyExists`]. To handle outcomes as they come instead of holding them
    /// all, use [`CloudTasksClient::batch_enqueuer`].
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
        let mut stub = self
            .raw_stub()
            .max_decoding_message_size(MAX_BATCH_RESPONSE_BYTES);
        self.map_response(stub.batch_create_tasks(request).await)
    }

    /// One `GetOperation` attempt for an operation of this client's queue.
    async fn get_operation_once(&self, name: &str, attempt: Attempt) -> Result<Operation, Error> {
        let request = self
            .prepare_by_name(
                GetOperationRequest {
                    name: name.to_owned(),
                },
                name,
                attempt,
            )
            .await?;
        let mut operations = OperationsClient::new(self.channel())
            .max_decoding_message_size(MAX_BATCH_RESPONSE_BYTES);
        self.map_response(operations.get_operation(request).await)
    }

    /// Polls the operation with a growing delay until it is done or the batch's deadline
    /// leaves no time for another poll. A failure to read it is [`Error::OperationLost`]: the
    /// batch was accepted, so its tasks may exist.
    async fn wait_operation(
        &self,
        mut operation: Operation,
        deadline: Instant,
        call: &BulkCall,
    ) -> Result<Operation, Error> {
        let name = operation.name.clone();
        let mut delay = FIRST_POLL_DELAY;
        while !operation.done {
            // The last poll comes at the deadline rather than a delay early.
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout {
                    after: call.total,
                    request_sent: true,
                });
            }
            tokio::time::sleep(delay.min(remaining)).await;
            delay = (delay * 3 / 2).min(MAX_POLL_DELAY);
            // Reading an operation is idempotent.
            operation = match self
                .with_retries(&call.until(deadline), Idempotency::Idempotent, |attempt| {
                    self.get_operation_once(&name, attempt)
                })
                .await
                .result
            {
                Ok(operation) => operation,
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        after: call.total,
                        request_sent: true,
                    });
                }
                Err(cause) => {
                    return Err(Error::OperationLost {
                        operation: name,
                        cause: Box::new(cause),
                    });
                }
            };
        }
        Ok(operation)
    }

    /// Creates `items` with one deadline: the batch, its resends, its operation's polls and,
    /// for tasks the operation refused for quota, further batches of just those.
    async fn create_batch<K>(&self, items: Vec<(K, Task)>, call: &BulkCall) -> Vec<Keyed<K>> {
        let deadline = Instant::now() + call.total;
        let mut done = Vec::with_capacity(items.len());
        let mut items = items;
        loop {
            let (keys, tasks): (Vec<K>, Vec<Task>) = items.into_iter().unzip();
            let rounds = self.create_batch_once(tasks, deadline, call).await;
            let mut again = Vec::new();
            for (key, round) in keys.into_iter().zip(rounds) {
                match round {
                    Round::Done(outcome) => done.push((key, call.outcome(outcome))),
                    Round::Exhausted(task, _) if Instant::now() < deadline => {
                        again.push((key, *task));
                    }
                    Round::Exhausted(_, error) => done.push((key, Err(error))),
                }
            }
            if again.is_empty() {
                return done;
            }
            call.pacer.exhausted();
            call.pacer.acquire(again.len()).await;
            items = again;
        }
    }

    /// One `BatchCreateTasks` call, retried with its `request_id` and followed to its end.
    async fn create_batch_once(
        &self,
        tasks: Vec<Task>,
        deadline: Instant,
        call: &BulkCall,
    ) -> Vec<Round> {
        let queue = self.queue_path();
        let count = tasks.len();
        let request = BatchCreateTasksRequest {
            parent: queue.to_owned(),
            requests: tasks
                .into_iter()
                .map(|task| CreateTaskRequest {
                    parent: queue.to_owned(),
                    // The created tasks' bodies pair unnamed tasks with their requests
                    // (`batch_outcomes`); roles/cloudtasks.enqueuer includes the
                    // cloudtasks.tasks.fullView permission this view needs.
                    response_view: if task.name.is_empty() {
                        crate::proto::google::cloud::tasks::v2::task::View::Full.into()
                    } else {
                        0
                    },
                    task: Some(task),
                })
                .collect(),
            request_id: Uuid::new_v4().to_string(),
        };
        let request_id = request.request_id.clone();
        let started = Instant::now();
        let mut sends = 0_u32;
        // The request_id makes a resent batch a no-op on Cloud Tasks, so the batch is retried
        // like a named task, with the same request (request_id included) each time; a resend
        // waits for its turn under the rate limit, and RESOURCE_EXHAUSTED slows it down.
        let sent = self
            .with_retries(&call.until(deadline), Idempotency::Idempotent, |attempt| {
                sends += 1;
                let resend = sends > 1;
                let request = &request;
                async move {
                    if resend {
                        call.pacer.acquire(count).await;
                    }
                    let result = self.send_batch_once(request.clone(), attempt).await;
                    if matches!(&result, Err(error) if error.code() == Some(Code::ResourceExhausted))
                    {
                        call.pacer.exhausted();
                    }
                    result
                }
            })
            .await;
        let operation = match sent.result {
            Ok(operation) => self.wait_operation(operation, deadline, call).await,
            Err(error) => Err(call.deadline_error(error)),
        };
        let sent_tasks = request
            .requests
            .into_iter()
            .map(|r| r.task.unwrap_or_default());
        let rounds = match operation {
            Ok(operation) => self.batch_outcomes(operation, sent_tasks.collect()),
            Err(error) => {
                tracing::warn!(queue, %request_id, %error, tasks = count, "BatchCreateTasks failed");
                sent_tasks
                    .map(|_| Round::Done(Err(error.clone())))
                    .collect()
            }
        };
        tracing::debug!(
            queue,
            %request_id,
            tasks = count,
            latency_ms = started.elapsed().as_millis(),
            "BatchCreateTasks finished"
        );
        rounds
    }

    /// Each request's outcome from a finished operation.
    ///
    /// `failed_requests` is keyed by the index in the request, which the proto defines. The
    /// response lists the created tasks in no promised order ("The tasks that were
    /// successfully created"), so nothing is paired by position: a named task is found by its
    /// name, an unnamed one by its content (URL, method, body, the headers it was sent with,
    /// schedule time), which the FULL view returns. Two requests of one batch with the same
    /// content are the same request twice: either created task is theirs. A request neither
    /// failed nor found is reported as an error that may have created the task.
    fn batch_outcomes(&self, operation: Operation, sent: Vec<Task>) -> Vec<Round> {
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
        let mut created = CreatedTasks::new(created, &sent);
        sent.into_iter()
            .enumerate()
            .map(|(index, task)| {
                let failure = i32::try_from(index)
                    .ok()
                    .and_then(|index| failed.remove(&index));
                if let Some(status) = failure {
                    let error = self.status_error(rpc_status(status));
                    // As for a single task: ALREADY_EXISTS is an outcome for a named task.
                    return if error.is_already_exists() && !task.name.is_empty() {
                        Round::Done(Ok(Enqueued::AlreadyExists {
                            task_name: task.name,
                        }))
                    } else if error.code() == Some(Code::ResourceExhausted) {
                        Round::Exhausted(Box::new(task), error)
                    } else {
                        Round::Done(Err(error))
                    };
                }
                if let Some(error) = &batch_error {
                    return Round::Done(Err(error.clone()));
                }
                Round::Done(created.take(&task).map_or_else(
                    || {
                        Err(self.status_error(tonic::Status::unknown(
                            "BatchCreateTasks finished without reporting this task as failed, \
                             but returned no created task with its name or content; the task \
                             may or may not exist",
                        )))
                    },
                    |created| Ok(Enqueued::created(created)),
                ))
            })
            .collect()
    }
}

/// The tasks a batch created, to be claimed by the requests that created them.
struct CreatedTasks {
    by_name: HashMap<String, Task>,
    /// Unnamed requests' tasks by body, in the order returned.
    by_body: HashMap<Vec<u8>, VecDeque<Task>>,
}

impl CreatedTasks {
    fn new(created: Vec<Task>, sent: &[Task]) -> Self {
        let requested: std::collections::HashSet<&str> = sent
            .iter()
            .filter(|task| !task.name.is_empty())
            .map(|task| task.name.as_str())
            .collect();
        let mut by_name = HashMap::new();
        let mut by_body: HashMap<Vec<u8>, VecDeque<Task>> = HashMap::new();
        for task in created {
            if requested.contains(task.name.as_str()) {
                by_name.insert(task.name.clone(), task);
            } else {
                by_body
                    .entry(body(&task).to_vec())
                    .or_default()
                    .push_back(task);
            }
        }
        Self { by_name, by_body }
    }

    /// The created task of the request that sent `sent`, if it was returned. An unnamed task's
    /// body is cleared again, as CreateTask's default (BASIC) view returns it.
    fn take(&mut self, sent: &Task) -> Option<Task> {
        if !sent.name.is_empty() {
            return self.by_name.remove(&sent.name);
        }
        let candidates = self.by_body.get_mut(body(sent))?;
        let found = candidates
            .iter()
            .position(|created| same_content(sent, created))?;
        let mut task = candidates.remove(found)?;
        if let Some(MessageType::HttpRequest(http)) = &mut task.message_type {
            http.body = Vec::new();
        }
        Some(task)
    }
}

fn body(task: &Task) -> &[u8] {
    match &task.message_type {
        Some(MessageType::HttpRequest(http)) => &http.body,
        _ => &[],
    }
}

/// Whether `created` is what `sent` asked for (the body is already known to match): the same
/// URL and method, every header sent with its value (Cloud Tasks adds its own, and header
/// names are case-insensitive), and the same schedule time if one was set.
fn same_content(sent: &Task, created: &Task) -> bool {
    let (Some(MessageType::HttpRequest(sent_http)), Some(MessageType::HttpRequest(created_http))) =
        (&sent.message_type, &created.message_type)
    else {
        return false;
    };
    let headers_kept = sent_http.headers.iter().all(|(name, value)| {
        created_http
            .headers
            .iter()
            .any(|(other, other_value)| other.eq_ignore_ascii_case(name) && other_value == value)
    });
    let same_schedule = match (&sent.schedule_time, &created.schedule_time) {
        // Cloud Tasks truncates schedule times to microseconds.
        (Some(sent), Some(created)) => {
            sent.seconds == created.seconds && sent.nanos / 1000 == created.nanos / 1000
        }
        (Some(_), None) => false,
        (None, _) => true,
    };
    sent_http.url == created_http.url
        && sent_http.http_method == created_http.http_method
        && headers_kept
        && same_schedule
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

    #[test]
    fn the_default_rate_limit_is_the_ramp() {
        assert_eq!(BatchOptions::new().rate_limit(), RateLimit::default());
    }
}
