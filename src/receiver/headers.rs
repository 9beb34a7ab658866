//! The `X-CloudTasks-*` headers of one delivery attempt, parsed into a [`TaskContext`].

use std::fmt;
use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Header names as Cloud Tasks sends them (HTTP header names are case-insensitive).
pub const QUEUE_NAME_HEADER: &str = "x-cloudtasks-queuename";
/// Short ID of the task.
pub const TASK_NAME_HEADER: &str = "x-cloudtasks-taskname";
/// Times this task was attempted before this attempt.
pub const RETRY_COUNT_HEADER: &str = "x-cloudtasks-taskretrycount";
/// Responses received for this task, excluding 5xx.
pub const EXECUTION_COUNT_HEADER: &str = "x-cloudtasks-taskexecutioncount";
/// Schedule time of the task, in seconds since the epoch.
pub const ETA_HEADER: &str = "x-cloudtasks-tasketa";
/// HTTP status of the previous attempt (retries only).
pub const PREVIOUS_RESPONSE_HEADER: &str = "x-cloudtasks-taskpreviousresponse";
/// Why the task is retried (retries only).
pub const RETRY_REASON_HEADER: &str = "x-cloudtasks-taskretryreason";

/// What Cloud Tasks tells the handler about the attempt it is making.
///
/// Only Cloud Tasks can set these headers on Google's infrastructure (it strips client-supplied
/// `X-CloudTasks-*` headers), but they are not authenticated: trust them after the OIDC token
/// has been verified, not instead of it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TaskContext {
    /// Short ID of the queue (`X-CloudTasks-QueueName`), e.g. `document-processing`.
    pub queue_name: String,
    /// Short ID of the task (`X-CloudTasks-TaskName`), the last segment of its full name.
    pub task_name: String,
    /// How many attempts came before this one (`X-CloudTasks-TaskRetryCount`); 0 on the first.
    pub retry_count: u32,
    /// How many attempts got a response other than 5xx (`X-CloudTasks-TaskExecutionCount`).
    pub execution_count: u32,
    /// When the task was scheduled to run (`X-CloudTasks-TaskETA`).
    pub eta: SystemTime,
    /// HTTP status the previous attempt got (`X-CloudTasks-TaskPreviousResponse`), on retries.
    /// 0 means the attempt got no response at all.
    pub previous_response: Option<u16>,
    /// Why Cloud Tasks retries (`X-CloudTasks-TaskRetryReason`), when it says.
    pub retry_reason: Option<String>,
}

impl TaskContext {
    /// Parses the headers of a Cloud Tasks HTTP request.
    ///
    /// # Errors
    /// A [`HeaderError`] naming the first required header that is missing or malformed: the
    /// request did not come from Cloud Tasks (or came through a proxy that dropped headers).
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, HeaderError> {
        let required = |name: &'static str| {
            text(headers, name)?
                .filter(|value| !value.is_empty())
                .ok_or(HeaderError {
                    header: name,
                    problem: Problem::Missing,
                })
        };
        let number = |name: &'static str| {
            let value = required(name)?;
            value
                .parse::<u32>()
                .map_err(|_| HeaderError::malformed(name, value, "a count"))
        };
        let eta_text = required(ETA_HEADER)?;
        let eta = parse_eta(eta_text).ok_or_else(|| {
            HeaderError::malformed(ETA_HEADER, eta_text, "seconds since the epoch")
        })?;
        let previous_response = match text(headers, PREVIOUS_RESPONSE_HEADER)? {
            None | Some("") => None,
            Some(value) => Some(value.parse::<u16>().map_err(|_| {
                HeaderError::malformed(PREVIOUS_RESPONSE_HEADER, value, "an HTTP status code")
            })?),
        };
        let retry_reason = text(headers, RETRY_REASON_HEADER)?
            .filter(|reason| !reason.is_empty())
            .map(str::to_owned);
        Ok(Self {
            queue_name: required(QUEUE_NAME_HEADER)?.to_owned(),
            task_name: required(TASK_NAME_HEADER)?.to_owned(),
            retry_count: number(RETRY_COUNT_HEADER)?,
            execution_count: number(EXECUTION_COUNT_HEADER)?,
            eta,
            previous_response,
            retry_reason,
        })
    }

    /// Whether an earlier attempt of this task was made.
    pub fn is_retry(&self) -> bool {
        self.retry_count > 0
    }

    /// The number of this attempt: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.retry_count.saturating_add(1)
    }

    /// Whether this attempt is the last one a queue with this `max_attempts` makes (its
    /// `RetryConfig.max_attempts`: attempts per task, the first included; -1 means unlimited),
    /// so a handler can record a final failure before answering one.
    ///
    /// Exact when the queue's `max_retry_duration` is 0 (unset). When it is set, Cloud Tasks
    /// stops only once both limits are reached, so an attempt this calls the last may be
    /// followed by more until that duration has passed.
    pub fn is_last_attempt(&self, max_attempts: i32) -> bool {
        u32::try_from(max_attempts).is_ok_and(|max| max > 0 && self.attempt() >= max)
    }
}

/// The header's value as text; `Ok(None)` when absent.
fn text<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, HeaderError> {
    headers
        .get(name)
        .map(|value| {
            value.to_str().map(str::trim).map_err(|_| HeaderError {
                header: name,
                problem: Problem::Malformed {
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    expected: "visible ASCII",
                },
            })
        })
        .transpose()
}

/// Cloud Tasks sends the ETA as decimal seconds, with a fraction (`1732895042.123456`).
fn parse_eta(value: &str) -> Option<SystemTime> {
    let seconds: f64 = value.parse().ok()?;
    let since_epoch = Duration::try_from_secs_f64(seconds).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// A Cloud Tasks header that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    header: &'static str,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Missing,
    Malformed {
        value: String,
        expected: &'static str,
    },
}

impl HeaderError {
    fn malformed(header: &'static str, value: &str, expected: &'static str) -> Self {
        Self {
            header,
            problem: Problem::Malformed {
                value: value.to_owned(),
                expected,
            },
        }
    }

    /// The header at fault, in lower case, e.g. `x-cloudtasks-taskretrycount`.
    pub fn header(&self) -> &'static str {
        self.header
    }

    /// Whether the header is absent (rather than present with a bad value).
    pub fn is_missing(&self) -> bool {
        self.problem == Problem::Missing
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Missing => write!(
                f,
                "header {} is missing: the request did not come from Cloud Tasks, or a proxy \
                 dropped its headers",
                self.header
            ),
            Problem::Malformed { value, expected } => write!(
                f,
                "header {} is {value:?}, expected {expected}",
                self.header
            ),
        }
    }
}

impl std::error::Error for HeaderError {}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn first_attempt() -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("X-CloudTasks-QueueName", "document-processing"),
            ("X-CloudTasks-TaskName", "0123abcd"),
            ("X-CloudTasks-TaskRetryCount", "0"),
            ("X-CloudTasks-TaskExecutionCount", "0"),
            ("X-CloudTasks-TaskETA", "1732895042.25"),
        ] {
            headers.insert(
                http::HeaderName::try_from(name).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn first_attempt_headers() {
        let context = TaskContext::from_headers(&first_attempt()).unwrap();
        assert_eq!(context.queue_name, "document-processing");
        assert_eq!(context.task_name, "0123abcd");
        assert_eq!(context.retry_count, 0);
        assert_eq!(context.execution_count, 0);
        assert_eq!(
            context.eta,
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_732_895_042_250)
        );
        assert_eq!(context.previous_response, None);
        assert_eq!(context.retry_reason, None);
        assert!(!context.is_retry());
        assert_eq!(context.attempt(), 1);
    }

    #[test]
    fn last_attempt_follows_max_attempts() {
        let mut headers = first_attempt();
        let context = TaskContext::from_headers(&headers).unwrap();
        assert!(context.is_last_attempt(1));
        assert!(!context.is_last_attempt(2));
        assert!(!context.is_last_attempt(-1), "unlimited");
        headers.insert(RETRY_COUNT_HEADER, HeaderValue::from_static("4"));
        let fifth = TaskContext::from_headers(&headers).unwrap();
        assert_eq!(fifth.attempt(), 5);
        assert!(!fifth.is_last_attempt(6));
        assert!(fifth.is_last_attempt(5));
        assert!(
            fifth.is_last_attempt(3),
            "past the limit (the queue was changed)"
        );
        assert!(!fifth.is_last_attempt(-1));
        assert!(!fifth.is_last_attempt(0), "0 is unset, not a limit");
    }

    #[test]
    fn retry_headers() {
        let mut headers = first_attempt();
        headers.insert(RETRY_COUNT_HEADER, HeaderValue::from_static("2"));
        headers.insert(EXECUTION_COUNT_HEADER, HeaderValue::from_static("1"));
        headers.insert(PREVIOUS_RESPONSE_HEADER, HeaderValue::from_static("503"));
        headers.insert(RETRY_REASON_HEADER, HeaderValue::from_static("HTTP 503"));
        let context = TaskContext::from_headers(&headers).unwrap();
        assert_eq!(context.retry_count, 2);
        assert_eq!(context.execution_count, 1);
        assert_eq!(context.previous_response, Some(503));
        assert_eq!(context.retry_reason.as_deref(), Some("HTTP 503"));
        assert!(context.is_retry());
    }

    #[test]
    fn missing_header_is_named() {
        for name in [
            QUEUE_NAME_HEADER,
            TASK_NAME_HEADER,
            RETRY_COUNT_HEADER,
            EXECUTION_COUNT_HEADER,
            ETA_HEADER,
        ] {
            let mut headers = first_attempt();
            headers.remove(name);
            let error = TaskContext::from_headers(&headers).unwrap_err();
            assert_eq!(error.header(), name);
            assert!(error.is_missing());
            assert!(error.to_string().contains("is missing"), "{error}");
        }
    }

    #[test]
    fn malformed_values_are_named_with_the_value() {
        for (name, value) in [
            (RETRY_COUNT_HEADER, "-1"),
            (EXECUTION_COUNT_HEADER, "many"),
            (ETA_HEADER, "tomorrow"),
            (ETA_HEADER, "-5"),
            (PREVIOUS_RESPONSE_HEADER, "70000"),
        ] {
            let mut headers = first_attempt();
            headers.insert(name, HeaderValue::from_static(value));
            let error = TaskContext::from_headers(&headers).unwrap_err();
            assert_eq!(error.header(), name, "{value}");
            assert!(!error.is_missing());
            assert!(error.to_string().contains(&format!("{value:?}")), "{error}");
        }
    }
}
