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
//!   needs neither `futures` nor a callback. A caller that must see outcomes while its input
//!   stalls waits for [`BatchEnqueuer::next_finished`] beside its read (`enqueue-batch` does).
//! - Each task is validated locally first (`HttpTask::into_proto`), so one bad task fails alone
//!   instead of making Cloud Tasks reject its whole batch.
//! - Tasks of a batch that failed as a whole each get a clone of its error (`Error` is cheap to
//!   clone: its causes are shared), so every task's outcome keeps `source()`.
//! - An endpoint that answers `BatchCreateTasks` with UNIMPLEMENTED (an emulator without it)
//!   processed nothing, so the batch's tasks go one `CreateTask` each, within the pace the
//!   batch reserved and in its place among the calls in flight; the client remembers it
//!   ([`CloudTasksClient::batch_create_tasks_unimplemented`]) and sends every later batch that
//!   way. Not after an attempt that may have created the tasks (a lost answer, then
//!   UNIMPLEMENTED on the resend): sending them again could create each twice.
//! - Retries follow the crate's one policy (`retry.rs`): a batch is idempotent thanks to its
//!   `request_id`, and polling an operation is a read, so both are retried on transient
//!   failures; per-task mode retries exactly as `enqueue` does. A batch that still
//!   fails reports each of its tasks failed, with [`Error::task_may_exist`] telling whether they
//!   may exist anyway; with de-duplicated (named) tasks, enqueuing them again is safe.
//!
//! The parts: `options` (what the caller sets), `enqueuer` (the bounded set of calls in flight,
//! and the pace each call waits for before it goes), `operation` (one `BatchCreateTasks` call:
//! send, poll, resend what was refused for quota; where the endpoint lacks
//! `BatchCreateTasks`, hand the tasks to `CreateTask`) and `pairing` (which created task answers
//! which request). The enqueuer spawns calls; a call owns its tasks until it returns one
//! outcome per task; pairing is pure.

mod enqueuer;
mod operation;
mod options;
mod pairing;

use std::time::Duration;

use tokio::time::Instant;

use crate::client::{CallOptions, Enqueued};
use crate::error::Error;
use crate::rate::Pacer;
use crate::retry::RetryPolicy;

pub use enqueuer::BatchEnqueuer;
pub use options::{BatchOptions, EnqueueMode};

/// The most tasks one `BatchCreateTasks` call may carry.
pub const MAX_BATCH_SIZE: usize = 100;

/// The deadline of each bulk call (a batch, its resends and its operation's polls; or one task
/// in per-task mode) unless [`BatchOptions::with_call_options`] sets a total timeout.
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Attempts of a bulk call under the client's retry policy: more than a single call's, since
/// quota refusals are expected in a backfill and the batch's deadline bounds them anyway.
const BULK_MAX_ATTEMPTS: u32 = 20;

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
            Error::AfterPossiblyProcessed { last, earlier } => Error::AfterPossiblyProcessed {
                last: Box::new(self.deadline_error(*last)),
                earlier,
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
