//! `HttpTask`: what a caller wants Cloud Tasks to deliver, before it becomes a proto `Task`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::dedupe::document_task_id;
use crate::error::Error;
use crate::payload::{PROCESS_DOCUMENT_PATH, ProcessDocumentPayload};
use crate::proto::{HttpMethod, HttpRequest, MessageType, OidcToken, Task};
use crate::validate;

/// The deadline the Python backend gave document-processing tasks (also Cloud Tasks' default).
pub const DEFAULT_DISPATCH_DEADLINE: Duration = Duration::from_secs(600);

/// Cloud Tasks keeps `schedule_time` at most this far ahead.
const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The task size the `Task` proto documents as the maximum.
pub(crate) const MAX_TASK_BYTES: usize = 100 * 1024;

/// Headers Cloud Tasks sets or reserves itself; a task may not set them.
fn is_reserved_header(name: &str) -> bool {
    // Compared case-insensitively in place: every task passes here, most with a header or two.
    let starts_with = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    ["host", "content-length", "user-agent", "authorization"]
        .iter()
        .any(|reserved| name.eq_ignore_ascii_case(reserved))
        || starts_with("x-google-")
        || starts_with("x-appengine-")
}

/// An HTTP request for Cloud Tasks to deliver to a path of the backend's service URL, with the
/// client's OIDC token.
///
/// ```
/// use std::time::Duration;
/// use cloud_tasks::HttpTask;
///
/// let task = HttpTask::post("/api/tasks/reindex")
///     .with_json_body(br#"{"all": true}"#.to_vec())
///     .with_header("X-Request-Origin", "nightly")
///     .with_dispatch_deadline(Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTask {
    pub(crate) path: String,
    pub(crate) method: HttpMethod,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) dispatch_deadline: Duration,
    pub(crate) schedule_time: Option<SystemTime>,
    pub(crate) task_id: Option<String>,
}

impl HttpTask {
    /// A task that sends `method` to `path` (which starts with `/`) under the service URL.
    pub fn new(method: HttpMethod, path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            method,
            headers: Vec::new(),
            body: Vec::new(),
            dispatch_deadline: DEFAULT_DISPATCH_DEADLINE,
            schedule_time: None,
            task_id: None,
        }
    }

    /// A `POST` to `path`.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(HttpMethod::Post, path)
    }

    /// Sets the body, as is.
    #[must_use]
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Sets a JSON body and `Content-Type: application/json` (Cloud Tasks sets no content type).
    #[must_use]
    pub fn with_json_body(self, json: Vec<u8>) -> Self {
        self.with_header("Content-Type", "application/json")
            .with_body(json)
    }

    /// Adds a header for Cloud Tasks to send; a later value for the same name replaces it.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.headers
            .retain(|(existing, _)| !existing.eq_ignore_ascii_case(&name));
        self.headers.push((name, value.into()));
        self
    }

    /// How long Cloud Tasks waits for the handler's answer (15 s to 30 min; default 10 min).
    #[must_use]
    pub fn with_dispatch_deadline(mut self, deadline: Duration) -> Self {
        self.dispatch_deadline = deadline;
        self
    }

    /// Delivers no earlier than `time` (at most 30 days ahead).
    #[must_use]
    pub fn with_schedule_time(mut self, time: SystemTime) -> Self {
        self.schedule_time = Some(time);
        self
    }

    /// Names the task `{queue}/tasks/{task_id}`, so Cloud Tasks refuses a second task with the
    /// same ID (`[A-Za-z0-9_-]{1,500}`; prefer hashed, well-distributed IDs).
    #[must_use]
    pub fn with_task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    /// The task ID, if the task is named.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// Checks the task against Cloud Tasks' rules and turns it into the proto `Task`.
    pub(crate) fn into_proto(
        self,
        queue_path: &str,
        service_url: &str,
        service_account_email: &str,
        now: SystemTime,
    ) -> Result<Task, Error> {
        let invalid = Error::InvalidTask;
        if !self.path.starts_with('/') {
            return Err(invalid(format!(
                "path {:?} must start with '/'; it is appended to the service URL",
                self.path
            )));
        }
        validate::dispatch_deadline(self.dispatch_deadline).map_err(invalid)?;
        if let Some(task_id) = &self.task_id {
            validate::task_id(task_id).map_err(invalid)?;
        }
        if let Some((name, _)) = self
            .headers
            .iter()
            .find(|(name, _)| is_reserved_header(name))
        {
            return Err(invalid(format!(
                "header {name:?} is set or reserved by Cloud Tasks; remove it"
            )));
        }
        let schedule_time = match self.schedule_time {
            Some(time) if time > now + MAX_SCHEDULE_AHEAD => {
                return Err(invalid(format!(
                    "schedule time is {} s ahead; Cloud Tasks accepts at most 30 days ({} s)",
                    time.duration_since(now).unwrap_or_default().as_secs(),
                    MAX_SCHEDULE_AHEAD.as_secs()
                )));
            }
            Some(time) => Some(prost_types::Timestamp::from(time)),
            None => None,
        };
        let url = [service_url, &self.path].concat();
        if url.len() > validate::MAX_URL_LEN {
            return Err(invalid(format!(
                "task URL is {} characters long; Cloud Tasks accepts at most {}",
                url.len(),
                validate::MAX_URL_LEN
            )));
        }
        let task = Task {
            name: self
                .task_id
                .map(|id| format!("{queue_path}/tasks/{id}"))
                .unwrap_or_default(),
            schedule_time,
            dispatch_deadline: Some(
                prost_types::Duration::try_from(self.dispatch_deadline)
                    .expect("deadline was checked to be at most 30 minutes"),
            ),
            message_type: Some(MessageType::HttpRequest(HttpRequest {
                url,
                http_method: self.method.into(),
                headers: self.headers.into_iter().collect::<HashMap<_, _>>(),
                body: self.body,
                authorization_header: Some(crate::proto::AuthorizationHeader::OidcToken(
                    OidcToken {
                        service_account_email: service_account_email.to_owned(),
                        audience: service_url.to_owned(),
                    },
                )),
            })),
            ..Task::default()
        };
        let size = prost::Message::encoded_len(&task);
        if size > MAX_TASK_BYTES {
            return Err(invalid(format!(
                "task is {size} bytes encoded; Cloud Tasks accepts at most {MAX_TASK_BYTES} \
                 (store large payloads elsewhere and send a reference)"
            )));
        }
        Ok(task)
    }
}

/// A document to process: the Python backend's task, optionally de-duplicated.
///
/// ```
/// use cloud_tasks::{DocumentTask, Uuid};
///
/// let document_id = Uuid::new_v4();
/// // Enqueuing this twice creates one task.
/// let once = DocumentTask::new(document_id, "report.pdf").deduplicated();
/// // A deliberate re-run later gets a task of its own.
/// let again = DocumentTask::new(document_id, "report.pdf").deduplicated_with_key("model-v2");
/// assert_ne!(once.task_id(), again.task_id());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentTask {
    payload: ProcessDocumentPayload,
    task_id: Option<String>,
}

impl DocumentTask {
    /// An unnamed task, as the Python backend sent.
    pub fn new(document_id: Uuid, filename: impl Into<String>) -> Self {
        Self {
            payload: ProcessDocumentPayload {
                document_id,
                filename: filename.into(),
            },
            task_id: None,
        }
    }

    /// Names the task after the document, so that enqueuing the same document again (a retry,
    /// a double submit, a re-run backfill) creates no second task while Cloud Tasks remembers
    /// the name: while the task exists, and for about 1 hour after it ran or was deleted (the
    /// API reference says up to 24 hours; about 9 days for queue.yaml queues).
    #[must_use]
    pub fn deduplicated(mut self) -> Self {
        self.task_id = Some(document_task_id(self.payload.document_id, None));
        self
    }

    /// Like [`DocumentTask::deduplicated`], under a key of the caller's, so that the same
    /// document can be deliberately processed again with a new key.
    #[must_use]
    pub fn deduplicated_with_key(mut self, key: &str) -> Self {
        self.task_id = Some(document_task_id(self.payload.document_id, Some(key)));
        self
    }

    /// The document's ID.
    pub fn document_id(&self) -> Uuid {
        self.payload.document_id
    }

    /// The task ID in de-duplicated mode.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The HTTP task the backend's handler receives.
    fn to_http_task(&self) -> Result<HttpTask, Error> {
        validate::document(self.payload.document_id, &self.payload.filename)
            .map_err(Error::InvalidTask)?;
        let task = HttpTask::post(PROCESS_DOCUMENT_PATH)
            .with_json_body(self.payload.to_json_bytes())
            .with_dispatch_deadline(DEFAULT_DISPATCH_DEADLINE);
        Ok(match &self.task_id {
            Some(task_id) => task.with_task_id(task_id.clone()),
            None => task,
        })
    }
}

impl From<ProcessDocumentPayload> for DocumentTask {
    /// An unnamed task for the payload, as the Python backend sent.
    fn from(payload: ProcessDocumentPayload) -> Self {
        Self {
            payload,
            task_id: None,
        }
    }
}

/// What [`CloudTasksClient::enqueue`](crate::CloudTasksClient::enqueue), `enqueue_all` and
/// [`BatchEnqueuer::push`](crate::BatchEnqueuer::push) take: any [`HttpTask`], or a
/// [`DocumentTask`] for the backend's processing endpoint. Each converts into it, so callers
/// pass either as is.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NewTask {
    /// A request to any path of the backend.
    Http(HttpTask),
    /// A document to process, as the Python backend enqueued it.
    Document(DocumentTask),
}

impl NewTask {
    /// The HTTP task to send; `dedupe` names an unnamed document's task after the document.
    pub(crate) fn into_http_task(self, dedupe: bool) -> Result<HttpTask, Error> {
        match self {
            Self::Http(task) => Ok(task),
            Self::Document(document) if dedupe && document.task_id.is_none() => {
                document.deduplicated().to_http_task()
            }
            Self::Document(document) => document.to_http_task(),
        }
    }

    /// The document's ID, for the call's tracing span.
    pub(crate) fn document_id(&self) -> Option<Uuid> {
        match self {
            Self::Http(_) => None,
            Self::Document(document) => Some(document.document_id()),
        }
    }
}

impl From<HttpTask> for NewTask {
    fn from(task: HttpTask) -> Self {
        Self::Http(task)
    }
}

impl From<DocumentTask> for NewTask {
    fn from(document: DocumentTask) -> Self {
        Self::Document(document)
    }
}

impl From<ProcessDocumentPayload> for NewTask {
    fn from(payload: ProcessDocumentPayload) -> Self {
        Self::Document(payload.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_match_in_any_case() {
        for name in [
            "Host",
            "CONTENT-LENGTH",
            "user-agent",
            "Authorization",
            "X-Google-Foo",
            "x-appengine-queuename",
        ] {
            assert!(is_reserved_header(name), "{name}");
        }
        for name in [
            "Content-Type",
            "X-Job",
            "x-goog",
            "hostname",
            "x-googl",
            "é-x-google-",
        ] {
            assert!(!is_reserved_header(name), "{name}");
        }
    }
}
