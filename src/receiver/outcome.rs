//! What a handler tells Cloud Tasks: [`TaskOutcome`], mapped to the HTTP answer Cloud Tasks acts
//! on. The semantics, with their sources, are in `docs/RECEIVING.md`.

use std::time::Duration;

use http::StatusCode;

/// How processing a task went, as the HTTP answer Cloud Tasks acts on.
///
/// Cloud Tasks removes a task when its handler answers 2xx and retries it, per the queue's
/// `RetryConfig`, on any other status or no answer at all. So:
///
/// | outcome | status | Cloud Tasks |
/// |---|---|---|
/// | [`Done`](TaskOutcome::Done) | 200 | removes the task |
/// | [`RetryLater`](TaskOutcome::RetryLater) | 503 (+ `Retry-After` with a delay) | retries after the queue's backoff; 503 also makes it slow the queue's dispatch for a while |
/// | [`GiveUp`](TaskOutcome::GiveUp) | 200, and a warning in the log | removes the task: any non-2xx would be retried |
///
/// The `Retry-After` delay is a hint: Cloud Tasks' API reference says it is "considered" when
/// it backs off after a 429 or 503, not that the next attempt waits exactly that long. For a
/// task that must run at a given time, enqueue a new one with a `schedule_time` and answer
/// `Done`.
///
/// With the `axum` feature it is an `IntoResponse`, so a handler can return it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum TaskOutcome {
    /// The work is done (or was already done by an earlier delivery): Cloud Tasks removes the
    /// task.
    Done,
    /// The work could not be done now (a dependency is down, a resource is not ready): Cloud
    /// Tasks retries, after at least the queue's `min_backoff`.
    RetryLater {
        /// A hint sent as `Retry-After`, in whole seconds (rounded up).
        after: Option<Duration>,
    },
    /// The task can never succeed (a document that no longer exists, a body it cannot use):
    /// answered 2xx so that Cloud Tasks stops retrying, and logged as a warning with `reason`,
    /// which is the only trace it leaves.
    GiveUp {
        /// Why, for the log.
        reason: String,
    },
}

impl TaskOutcome {
    /// [`TaskOutcome::RetryLater`] without a delay.
    pub const fn retry_later() -> Self {
        Self::RetryLater { after: None }
    }

    /// [`TaskOutcome::RetryLater`] with a `Retry-After` hint.
    pub const fn retry_after(delay: Duration) -> Self {
        Self::RetryLater { after: Some(delay) }
    }

    /// [`TaskOutcome::GiveUp`] for `reason`.
    pub fn give_up(reason: impl Into<String>) -> Self {
        Self::GiveUp {
            reason: reason.into(),
        }
    }

    /// The status to answer.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Done | Self::GiveUp { .. } => StatusCode::OK,
            Self::RetryLater { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `Retry-After` value to send, in seconds, if any.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            Self::RetryLater { after: Some(delay) } => {
                Some(delay.as_secs() + u64::from(delay.subsec_nanos() > 0))
            }
            _ => None,
        }
    }

    /// Whether Cloud Tasks will remove the task after this answer.
    pub fn completes_task(&self) -> bool {
        self.status_code().is_success()
    }

    /// The short body to answer with.
    pub fn body(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::RetryLater { .. } => "retry later",
            Self::GiveUp { .. } => "gave up; not retried",
        }
    }

    /// Logs a [`TaskOutcome::GiveUp`] as a warning (answered 2xx, it shows nowhere else); the
    /// other outcomes log nothing. The axum response calls it; other frameworks should too.
    pub fn log(&self) {
        if let Self::GiveUp { reason } = self {
            tracing::warn!(%reason, "giving up on a task: answering 200 so that Cloud Tasks stops retrying it");
        }
    }
}

impl<E: std::error::Error> From<Result<(), E>> for TaskOutcome {
    /// `Ok` is [`TaskOutcome::Done`]; an error is [`TaskOutcome::RetryLater`], logged.
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self::Done,
            Err(error) => {
                tracing::warn!(%error, "task failed; Cloud Tasks will retry it");
                Self::retry_later()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_the_status_cloud_tasks_acts_on() {
        assert_eq!(TaskOutcome::Done.status_code(), StatusCode::OK);
        assert!(TaskOutcome::Done.completes_task());
        assert_eq!(
            TaskOutcome::retry_later().status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(!TaskOutcome::retry_later().completes_task());
        assert_eq!(TaskOutcome::retry_later().retry_after_seconds(), None);
        let later = TaskOutcome::retry_after(Duration::from_millis(2500));
        assert_eq!(later.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(later.retry_after_seconds(), Some(3), "rounded up");
        assert_eq!(
            TaskOutcome::retry_after(Duration::from_secs(30)).retry_after_seconds(),
            Some(30)
        );
        // Any non-2xx is retried, so giving up has to answer 2xx.
        let give_up = TaskOutcome::give_up("document deleted");
        assert_eq!(give_up.status_code(), StatusCode::OK);
        assert!(give_up.completes_task());
        assert_eq!(give_up.retry_after_seconds(), None);
    }

    #[test]
    fn results_become_done_or_retry() {
        let ok: Result<(), std::io::Error> = Ok(());
        assert_eq!(TaskOutcome::from(ok), TaskOutcome::Done);
        let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        assert_eq!(TaskOutcome::from(failed), TaskOutcome::retry_later());
    }
}
