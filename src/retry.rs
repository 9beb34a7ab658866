//! The one place that decides whether a failed call is sent again, and when.
//!
//! A `CreateTask` without a name is not idempotent: if the request reached Cloud Tasks, sending
//! it again may create a second task, and a second Docling + LLM extraction. So an unnamed task
//! is retried only when the request provably was not processed: no connection could be made,
//! the server refused it unprocessed (REFUSED_STREAM, GOAWAY), or its attempt timed out before
//! it was sent. A named task is idempotent (Cloud Tasks refuses a second task with the same
//! name), so transient failures are retried, and the caller treats ALREADY_EXISTS on a retry as
//! the earlier attempt's success.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{Code, Error};
use crate::rate::Pacer;
use crate::telemetry::CallRecord;
use crate::transport::RequestWritten;

/// Exponential backoff with full jitter, bounded by the call's total deadline.
///
/// The defaults follow Google's client settings for Cloud Tasks: 100 ms, growing 1.3x per
/// attempt, at most 10 s between attempts.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct RetryPolicy {
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
    max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 1.3,
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// A policy that never sends a call twice.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before the first retry (before jitter).
    pub fn with_initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The longest wait between attempts (before jitter).
    pub fn with_max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// How much the wait grows per attempt (at least 1).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier.max(1.0);
        self
    }

    /// Attempts in all, the first included (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The wait before retry number `retry` (1-based), before jitter.
    fn backoff(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        self.initial_backoff
            .mul_f64(self.multiplier.powi(exponent))
            .min(self.max_backoff)
    }
}

/// Whether sending the same request again could create a second task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Unnamed task: every send that reaches Cloud Tasks may create one.
    NotIdempotent,
    /// Named task: Cloud Tasks refuses a second task with the same name.
    Idempotent,
}

/// Whether `error` from an attempt may be retried.
pub(crate) fn is_retryable(error: &Error, idempotency: Idempotency) -> bool {
    if error.is_safe_to_resend_transient() {
        return true;
    }
    idempotency == Idempotency::Idempotent
        && (matches!(error, Error::Timeout { .. })
            || matches!(
                error.code(),
                Some(
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Internal
                        | Code::Unknown
                        | Code::Cancelled
                )
            ))
}

/// The outcome of a retried call and how many attempts it took.
#[derive(Debug)]
pub(crate) struct Attempted<T> {
    pub(crate) result: Result<T, Error>,
    pub(crate) attempts: u32,
}

/// What one attempt is given: the time it may take, and the flag the transport sets once the
/// request is handed to the connection (the attempt puts it in the request's extensions).
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub(crate) budget: Duration,
    pub(crate) written: RequestWritten,
}

/// The pace a bulk call's resends keep: each waits for its `tasks`' turn on the shared
/// `pacer`, and RESOURCE_EXHAUSTED slows the pacer down. The first attempt's turn is the
/// caller's to wait for, before the call's deadline starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace<'a> {
    pub(crate) pacer: &'a Pacer,
    pub(crate) tasks: usize,
}

/// Runs `attempt` until it succeeds, fails for good, or the total deadline leaves no time for
/// another attempt. `attempt` receives the time it may take, at most `attempt_timeout`.
///
/// With a `pace`, RESOURCE_EXHAUSTED halves the rate, and a call of more tasks than one second
/// of the lowered rate is not resent but ends with the refusal, for its caller to split. A
/// resend first waits for its turn, outside its attempt's time: an attempt
/// that waited for the pace inside its deadline could time out waiting, keep its turn and
/// take another for its retry, until a slow pace had no turn left that anyone used. A turn
/// that would come after the total deadline is not taken; the call ends with its last error.
/// Each attempt runs in its own span under `call`'s and is recorded there.
pub(crate) async fn run<T, F, Fut>(
    call: &CallRecord<'_>,
    policy: &RetryPolicy,
    idempotency: Idempotency,
    attempt_timeout: Duration,
    total_timeout: Duration,
    pace: Option<Pace<'_>>,
    mut attempt: F,
) -> Attempted<T>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + total_timeout;
    let mut attempts = 0;
    let mut previous_not_processed = false;
    // The first failure of an attempt that may have been processed: a later attempt's failure,
    // even one that sent nothing, cannot undo it.
    let mut possibly_processed: Option<Error> = None;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let budget = attempt_timeout.min(remaining);
        // A timeout names the limit the caller set, not the remainder that was left of it.
        let limit = if budget < attempt_timeout {
            total_timeout
        } else {
            attempt_timeout
        };
        let written = RequestWritten::default();
        let this_attempt = Attempt {
            budget,
            written: written.clone(),
        };
        let record = call.attempt(attempts);
        let sent = attempt(this_attempt).instrument(record.span().clone());
        let result = match tokio::time::timeout(budget, sent).await {
            Ok(Err(Error::Timeout { .. })) | Err(_) => Err(Error::Timeout {
                after: limit,
                request_sent: written.get(),
            }),
            Ok(result) => result,
        };
        record.finish(result.as_ref().err());
        let error = match result {
            Ok(value) => {
                return Attempted {
                    result: Ok(value),
                    attempts,
                };
            }
            Err(error) => error,
        };
        if let Some(pace) = pace
            && error.code() == Some(Code::ResourceExhausted)
        {
            pace.pacer.exhausted();
            // A quota refusal stored nothing. Resent whole, a batch larger than one second of
            // the lowered rate would burst past it, and might never fit the quota: the call
            // ends here and its caller sends the tasks again in smaller calls. Not after an
            // attempt that may have been processed: only the same request (its request_id)
            // may follow that one.
            if pace.tasks > pace.pacer.tasks_per_call(pace.tasks)
                && possibly_processed.is_none()
                && !error.task_may_exist()
            {
                return Attempted {
                    result: Err(error),
                    attempts,
                };
            }
        }
        // As gRPC's transparent retry: a request the server did not process goes again at once
        // (on another connection when its own was retired); a second time in a row, after the
        // backoff.
        let not_processed = matches!(error, Error::NotProcessed { .. });
        let wait = if not_processed && !previous_not_processed {
            Duration::ZERO
        } else {
            jittered(policy.backoff(attempts))
        };
        previous_not_processed = not_processed;
        let out_of_time = Instant::now() + wait >= deadline;
        if attempts >= policy.max_attempts || out_of_time || !is_retryable(&error, idempotency) {
            return Attempted {
                result: Err(remembering(error, possibly_processed)),
                attempts,
            };
        }
        if possibly_processed.is_none() && error.task_may_exist() {
            possibly_processed = Some(error.clone());
        }
        tracing::debug!(attempt = attempts, wait_ms = wait.as_millis(), %error, "retrying");
        call.retrying(&error);
        tokio::time::sleep(wait).await;
        if let Some(pace) = pace
            && !pace.pacer.acquire_before(pace.tasks, Some(deadline)).await
        {
            return Attempted {
                result: Err(remembering(error, possibly_processed)),
                attempts,
            };
        }
    }
}

/// The call's error: the last attempt's, marked as possibly processed if an earlier attempt
/// may have been.
fn remembering(last: Error, possibly_processed: Option<Error>) -> Error {
    match possibly_processed {
        Some(earlier) if !last.task_may_exist() => Error::AfterPossiblyProcessed {
            last: Box::new(last),
            earlier: Box::new(earlier),
        },
        _ => last,
    }
}

/// Full jitter: a uniformly random wait up to `backoff`, so that many clients that failed
/// together do not retry together.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn unavailable() -> Error {
        crate::error::from_status(
            tonic::Status::unavailable("try again"),
            crate::error::CallContext {
                endpoint: "http://127.0.0.1:1",
                queue: "projects/p/locations/l/queues/q",
                service_account: "a@p.iam.gserviceaccount.com",
                call: crate::error::Call::CreateTask,
            },
        )
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(100))
            .with_multiplier(2.0)
            .with_max_backoff(Duration::from_millis(500));
        let waits: Vec<_> = (1..=5).map(|retry| policy.backoff(retry)).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500].map(Duration::from_millis));
    }

    #[test]
    fn unnamed_tasks_are_retried_only_when_never_sent() {
        let reached_server = unavailable();
        assert!(!is_retryable(&reached_server, Idempotency::NotIdempotent));
        assert!(is_retryable(&reached_server, Idempotency::Idempotent));
        let timeout = Error::Timeout {
            after: Duration::from_secs(1),
            request_sent: true,
        };
        assert!(!is_retryable(&timeout, Idempotency::NotIdempotent));
        assert!(is_retryable(&timeout, Idempotency::Idempotent));
        let timeout_before_sending = Error::Timeout {
            after: Duration::from_secs(1),
            request_sent: false,
        };
        assert!(is_retryable(
            &timeout_before_sending,
            Idempotency::NotIdempotent
        ));
        let invalid = Error::InvalidTask("bad".to_owned());
        assert!(!is_retryable(&invalid, Idempotency::Idempotent));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_deadline() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::default().with_max_attempts(1000);
        let started = Instant::now();
        let server = crate::telemetry::Server::new("http://127.0.0.1:1", "q");
        let call = CallRecord::rpc(crate::permissions::Rpc::GetTask, &server, "t");
        let outcome: Attempted<()> = run(
            &call,
            &policy,
            Idempotency::Idempotent,
            Duration::from_secs(20),
            Duration::from_secs(5),
            None,
            |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(unavailable()) }
            },
        )
        .await;
        assert!(outcome.result.unwrap_err().code() == Some(Code::Unavailable));
        assert!(outcome.attempts > 3, "{}", outcome.attempts);
        assert_eq!(outcome.attempts, calls.load(Ordering::SeqCst));
        assert!(started.elapsed() <= Duration::from_secs(5));
    }

    /// An attempt that may have been processed (UNAVAILABLE) followed by one that sent
    /// nothing (a timeout before sending): the call's error says the task may exist.
    #[tokio::test(start_paused = true)]
    async fn a_failure_that_sent_nothing_does_not_hide_an_earlier_one_that_may_have_landed() {
        let mut calls = 0;
        let outcome: Attempted<()> = run(
            &CallRecord::rpc(
                crate::permissions::Rpc::CreateTask,
                &crate::telemetry::Server::new("http://127.0.0.1:1", "q"),
                "q",
            ),
            &RetryPolicy::default().with_max_attempts(2),
            Idempotency::Idempotent,
            Duration::from_secs(1),
            Duration::from_secs(10),
            None,
            |_| {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Err(unavailable())
                    } else {
                        Err(Error::Timeout {
                            after: Duration::from_secs(1),
                            request_sent: false,
                        })
                    }
                }
            },
        )
        .await;
        let error = outcome.result.unwrap_err();
        assert_eq!(outcome.attempts, 2);
        assert!(error.task_may_exist(), "{error}");
        assert!(!error.was_never_sent(), "{error}");
        assert!(error.is_timeout(), "the last attempt's kind: {error:?}");
        let message = error.to_string();
        assert!(
            message.contains("could not be sent within 1s")
                && message.contains("earlier attempt may have reached Cloud Tasks")
                && message.contains("try again"),
            "{message}"
        );
    }

    /// 8 calls at 1 task/s, each with a 1 s attempt timeout, whose first attempt is not
    /// processed: every resend waits for its turn outside its attempt's time, so all 8 are
    /// sent again and succeed, one a second. Waiting inside the attempt, a resend timed out
    /// while waiting, kept its turn and took another: the pace stalled.
    #[tokio::test(start_paused = true)]
    async fn resends_at_one_task_per_second_do_not_stall() {
        let pacer = std::sync::Arc::new(Pacer::new(crate::rate::RateLimit::fixed(1)));
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let pacer = pacer.clone();
            calls.spawn(async move {
                pacer.acquire(1).await;
                let mut sends = 0;
                let outcome: Attempted<()> = run(
                    &CallRecord::rpc(
                        crate::permissions::Rpc::CreateTask,
                        &crate::telemetry::Server::new("http://127.0.0.1:1", "q"),
                        "q",
                    ),
                    &RetryPolicy::default(),
                    Idempotency::NotIdempotent,
                    Duration::from_secs(1),
                    Duration::from_secs(120),
                    Some(Pace {
                        pacer: &pacer,
                        tasks: 1,
                    }),
                    |_| {
                        sends += 1;
                        let first = sends == 1;
                        async move {
                            if first {
                                Err(Error::Timeout {
                                    after: Duration::from_secs(1),
                                    request_sent: false,
                                })
                            } else {
                                Ok(())
                            }
                        }
                    },
                )
                .await;
                outcome.result.map(|()| outcome.attempts)
            });
        }
        while let Some(joined) = calls.join_next().await {
            assert_eq!(joined.unwrap().unwrap(), 2);
        }
        // 16 sends at 1 a second.
        assert!(
            started.elapsed() <= Duration::from_secs(17),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_gets_at_most_the_remaining_time() {
        let started = Instant::now();
        let server = crate::telemetry::Server::new("http://127.0.0.1:1", "q");
        let call = CallRecord::rpc(crate::permissions::Rpc::CreateTask, &server, "q");
        let outcome: Attempted<()> = run(
            &call,
            &RetryPolicy::default(),
            Idempotency::NotIdempotent,
            Duration::from_secs(20),
            Duration::from_secs(2),
            None,
            |attempt| async move {
                assert_eq!(attempt.budget, Duration::from_secs(2));
                std::future::pending().await
            },
        )
        .await;
        let error = outcome.result.unwrap_err();
        assert!(error.is_timeout());
        assert!(error.to_string().contains("within 2s"), "{error}");
        assert_eq!(outcome.attempts, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
