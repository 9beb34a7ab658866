//! The bounded set of bulk calls in flight: [`BatchEnqueuer`] queues pushed tasks, sends a
//! call when a batch is full, and hands back each task's outcome with its key.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::client::{CloudTasksClient, Enqueued};
use crate::error::Error;
use crate::proto::Task;
use crate::rate::Pacer;
use crate::task::NewTask;
use crate::telemetry::{self, CallRecord};
#[cfg(doc)]
use crate::{DocumentTask, HttpTask, ProcessDocumentPayload, RateLimit};

use super::options::{BatchOptions, EnqueueMode};
use super::{BULK_MAX_ATTEMPTS, BulkCall, DEFAULT_BATCH_TIMEOUT, Keyed};

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
        let task = task.into();
        // Each task carries the context of its own `create` span, which the batch's `send`
        // span links to.
        let create = telemetry::create_span(self.client.queue_path(), task.document_id());
        let proto = create.in_scope(|| {
            task.into_http_task(self.options.dedupe)
                .and_then(|task| self.client.task_proto(task))
        });
        let done = self.push_proto(key, proto).await;
        telemetry::task_outcomes(self.client.server(), &done);
        done
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
        telemetry::task_outcomes(self.client.server(), &done);
        done
    }

    /// Waits for a call in flight to finish and returns its tasks' outcomes; `None` when no call
    /// is in flight. Cancel safe, so a caller can wait for it beside other events (more input, a
    /// signal) and handle each outcome when it is decided rather than at the next push.
    pub async fn next_finished(&mut self) -> Option<Vec<(K, Result<Enqueued, Error>)>> {
        let finished = self.in_flight.join_next().await.map(unwrap_joined)?;
        telemetry::task_outcomes(self.client.server(), &finished);
        Some(finished)
    }

    /// Calls in flight right now, including those waiting for their turn under the rate
    /// limit.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Tasks pushed but not sent yet: a batch that is not full. [`BatchEnqueuer::flush`] sends
    /// them, for a caller whose input pauses (so they are not held until more arrives).
    pub fn queued(&self) -> usize {
        self.pending.len()
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
        // A batch carries at most one second of the current rate: `--rate 30` sends 30 a
        // call, not bursts of 100.
        let full = match self.options.mode {
            EnqueueMode::Batch => self.call.pacer.tasks_per_call(self.options.batch_size),
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
        let mode = self.options.mode;
        self.in_flight.spawn(async move {
            call.pacer.acquire(items.len()).await;
            match mode {
                EnqueueMode::Batch => client.create_batch(items, &call).await,
                EnqueueMode::PerTask => client.create_each(items, &call).await,
            }
        });
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

    /// Creates each task with a `CreateTask` call of its own, one after the other: the call
    /// [`CloudTasksClient::enqueue`] makes, retries included, with the bulk call's deadline for
    /// each, and resends paced. The caller has reserved the tasks' pace.
    pub(super) async fn create_each<K>(
        &self,
        items: Vec<(K, Task)>,
        call: &BulkCall,
    ) -> Vec<Keyed<K>> {
        let mut done = Vec::with_capacity(items.len());
        for (key, task) in items {
            let options = call.until(Instant::now() + call.total);
            let send = CallRecord::send(
                telemetry::Rpc::CreateTask,
                self.server(),
                self.queue_path(),
                None,
                None,
            );
            send.link_tasks(std::slice::from_ref(&task));
            let outcome = self
                .enqueue_validated(&send, task, &options, Some(&call.pacer))
                .instrument(send.span().clone())
                .await
                .map_err(|error| call.deadline_error(error));
            done.push((key, call.outcome(outcome)));
        }
        done
    }
}
