//! What the caller of a bulk enqueue sets: mode, concurrency, batch size, de-duplication,
//! pace and deadlines.

use crate::client::CallOptions;
use crate::rate::RateLimit;
#[cfg(doc)]
use crate::{DocumentTask, Enqueued, HttpTask};

#[cfg(doc)]
use super::DEFAULT_BATCH_TIMEOUT;
use super::MAX_BATCH_SIZE;

/// How tasks are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnqueueMode {
    /// `BatchCreateTasks` with up to [`MAX_BATCH_SIZE`] tasks a call (the default).
    Batch,
    /// One `CreateTask` call per task, for servers or queues where batching is not wanted.
    /// (Batch mode sends one `CreateTask` per task by itself where the endpoint does not
    /// implement `BatchCreateTasks`.)
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
    pub(super) mode: EnqueueMode,
    pub(super) concurrency: usize,
    pub(super) batch_size: usize,
    pub(super) dedupe: bool,
    pub(super) call: CallOptions,
    pub(super) rate_limit: RateLimit,
    pub(super) created_tasks: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchOptions {
    /// Batches of 100, 8 calls in flight, documents not de-duplicated, Cloud Tasks' 500/50/5
    /// ramp up to 1000 tasks/s ([`RateLimit::default`]), a [`DEFAULT_BATCH_TIMEOUT`] deadline per call, outcomes
    /// without the created tasks.
    pub const fn new() -> Self {
        Self {
            mode: EnqueueMode::Batch,
            concurrency: 8,
            batch_size: MAX_BATCH_SIZE,
            dedupe: false,
            call: CallOptions::new(),
            rate_limit: RateLimit::recommended(),
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
    /// want one. The de-duplication is Cloud Tasks' own: an endpoint that ignores task names
    /// (some emulators do) creates the task again.
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
