//! The one error type of this crate, its status code, and the one place that interprets a
//! `tonic::Status`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use crate::CloudTasksClient;
use crate::permissions::{ACT_AS, FULL_VIEW, Requirement, Rpc};
use crate::transport::{NotSent, NotSentReason};

/// Everything that can go wrong when building a client or enqueuing a task.
///
/// Messages say what to do about the problem. Use the predicates ([`Error::is_not_found`],
/// [`Error::task_may_exist`], ...) and [`Error::code`] rather than matching on messages;
/// [`std::error::Error::source`] gives the underlying cause (the gRPC status as the transport
/// reported it, with the connection or HTTP/2 error under it, or a credentials error).
///
/// Cheap to clone: the tasks of a batch that failed as a whole share one error.
///
/// No variant carries an access token, an OIDC token or key material: neither `Display` nor
/// `Debug` can leak one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The settings or builder values are missing or malformed. Nothing was sent.
    Config(ConfigError),

    /// The task was rejected before anything was sent (bad path, header, size, deadline...).
    InvalidTask(String),

    /// Cloud Tasks answered the call with an error status.
    Rpc {
        /// What happened and what to do about it.
        message: String,
        /// The status as received.
        status: Status,
    },

    /// No connection to Cloud Tasks could be made (refused, DNS, TLS handshake, connect
    /// timeout). The request never left this process, so no task was created.
    Connect {
        /// The endpoint that could not be reached.
        endpoint: String,
        /// What the connection attempt reported.
        detail: String,
        /// The status the transport reported; its source chain holds the connection error.
        status: Status,
    },

    /// Cloud Tasks did not process the request: the server refused it (HTTP/2 REFUSED_STREAM)
    /// or was retiring the connection (GOAWAY), or the connection closed before the request was
    /// sent. No task was created; sending it again is safe, and the client already did so
    /// within its deadline and retry policy.
    NotProcessed {
        /// The endpoint the request went to.
        endpoint: String,
        /// What the connection reported.
        detail: String,
        /// The status the transport reported; its source chain holds the HTTP/2 error.
        status: Status,
    },

    /// The attempt did not complete within its deadline. If the request had been sent, it may
    /// have reached Cloud Tasks, and the task may or may not exist.
    Timeout {
        /// The deadline that expired.
        after: Duration,
        /// Whether the request had been handed to the connection. If not (the attempt waited
        /// for credentials, a connection or room on one), no task was created.
        request_sent: bool,
    },

    /// A `BatchCreateTasks` call was accepted (Cloud Tasks started its long-running
    /// operation), but the operation could not be read to its end: Cloud Tasks no longer knows
    /// it (NOT_FOUND: operations expire), or reading it failed for good. The batch may have
    /// created any of its tasks: [`Error::task_may_exist`] is true, and [`Error::code`] is
    /// the code the read failed with.
    OperationLost {
        /// The operation's name.
        operation: String,
        /// Why it could not be read.
        cause: Box<Error>,
    },

    /// A retried call failed for good, but an earlier attempt may have reached Cloud Tasks
    /// (it was sent and its answer was lost): whatever the last attempt failed with, the task
    /// (or the batch's tasks, or the document call's effect) may exist, so
    /// [`Error::task_may_exist`] is true. [`Error::code`] and the other predicates are the last
    /// attempt's.
    AfterPossiblyProcessed {
        /// The last attempt's failure.
        last: Box<Error>,
        /// The first failure of an attempt that may have been processed.
        earlier: Box<Error>,
    },

    /// Google credentials could not be loaded or could not produce an access token.
    Auth {
        /// The credentials error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },

    /// The endpoint could not be configured (bad URI or TLS setup). Nothing was sent.
    Transport {
        /// The endpoint that was being configured.
        endpoint: String,
        /// The transport error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => fmt::Display::fmt(error, f),
            Self::InvalidTask(message) => write!(f, "invalid task: {message}"),
            Self::Rpc { message, .. } => f.write_str(message),
            Self::Connect {
                endpoint, detail, ..
            } => write!(
                f,
                "cannot connect to Cloud Tasks at {endpoint}: {detail}; nothing was sent, so no \
                 task was created. Check the endpoint, the network, or that the emulator is \
                 running"
            ),
            Self::NotProcessed {
                endpoint, detail, ..
            } => write!(
                f,
                "Cloud Tasks at {endpoint} did not take the request: {detail}; nothing was \
                 processed, so no task was created and sending it again is safe"
            ),
            Self::Timeout {
                after,
                request_sent,
            } => f.write_str(&timeout_message(*after, *request_sent)),
            Self::OperationLost { operation, cause } if cause.is_not_found() => write!(
                f,
                "Cloud Tasks no longer knows operation {operation} of an accepted \
                 BatchCreateTasks call (operations expire; the operation is unknown or \
                 expired, not the queue): the batch was accepted, so its tasks may or may not \
                 exist. Enqueue de-duplicated tasks again (those that exist are reported as \
                 already enqueued); check the queue before enqueuing unnamed ones again ({})",
                cause.status_message().unwrap_or_default()
            ),
            Self::OperationLost { operation, cause } => write!(
                f,
                "operation {operation} of an accepted BatchCreateTasks call could not be read: \
                 {cause}; the batch was accepted, so its tasks may or may not exist"
            ),
            Self::AfterPossiblyProcessed { last, earlier } => write!(
                f,
                "the call failed: {last}. But an earlier attempt may have reached Cloud Tasks \
                 ({earlier}), so the task may or may not exist: check the queue before \
                 enqueuing an unnamed task again; a de-duplicated (named) task may be enqueued \
                 again"
            ),
            Self::Auth { source } => write!(
                f,
                "cannot get Google credentials: {source}. Run `gcloud auth application-default \
                 login` locally, set GOOGLE_APPLICATION_CREDENTIALS to a key file, or run on \
                 Google Cloud with an attached service account"
            ),
            Self::Transport { endpoint, source } => {
                write!(f, "cannot set up the connection to {endpoint}: {source}")
            }
        }
    }
}

/// Written by hand rather than derived: the source of a status is the transport's own status,
/// not the [`Status`] wrapper, so its cause chain reads as the transport reported it.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(error) => error.source(),
            Self::Rpc { status, .. }
            | Self::Connect { status, .. }
            | Self::NotProcessed { status, .. } => Some(&*status.inner),
            Self::Auth { source } | Self::Transport { source, .. } => Some(&**source),
            Self::OperationLost { cause, .. } => Some(&**cause),
            Self::AfterPossiblyProcessed { last, .. } => Some(&**last),
            Self::InvalidTask(_) | Self::Timeout { .. } => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Self::Config(error)
    }
}

impl Error {
    /// The gRPC status code Cloud Tasks (or the transport) answered with, if the call got
    /// that far.
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    /// The status message as received, if the call got an answer or a transport failure.
    pub fn status_message(&self) -> Option<&str> {
        self.status().map(Status::message)
    }

    /// The status details as received: an encoded `google.rpc.Status` (the
    /// `grpc-status-details-bin` trailer), empty if the server sent none. Decode it with
    /// `prost::Message::decode` into [`crate::proto::google::rpc::Status`].
    pub fn status_details(&self) -> Option<&[u8]> {
        self.status().map(Status::details)
    }

    fn status(&self) -> Option<&Status> {
        match self {
            Self::Rpc { status, .. }
            | Self::Connect { status, .. }
            | Self::NotProcessed { status, .. } => Some(status),
            Self::OperationLost { cause, .. } => cause.status(),
            Self::AfterPossiblyProcessed { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The queue (or another named resource) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// The caller lacks an IAM permission (enqueuer on the queue, or `actAs` on the OIDC account).
    pub fn is_permission_denied(&self) -> bool {
        self.code() == Some(Code::PermissionDenied)
    }

    /// A task with the same name exists or existed recently.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }

    /// Cloud Tasks rejected the request as malformed.
    pub fn is_invalid_argument(&self) -> bool {
        self.code() == Some(Code::InvalidArgument)
    }

    /// The endpoint does not implement the call (an emulator without it, or another server
    /// that is not Cloud Tasks): nothing was done. [`CloudTasksClient::enqueue_all`] and
    /// [`CloudTasksClient::batch_enqueuer`] handle a missing `BatchCreateTasks` themselves.
    pub fn is_unimplemented(&self) -> bool {
        self.code() == Some(Code::Unimplemented)
    }

    /// The call carried no valid credentials.
    pub fn is_unauthenticated(&self) -> bool {
        self.code() == Some(Code::Unauthenticated)
    }

    /// Settings, builder values or the task were rejected locally; nothing was sent.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Config(_) | Self::InvalidTask(_) | Self::Transport { .. }
        )
    }

    /// Credentials could not be obtained.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }

    /// The call timed out, on this side or on the server.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::AfterPossiblyProcessed { last, .. } => last.is_timeout(),
            _ => {
                matches!(self, Self::Timeout { .. }) || self.code() == Some(Code::DeadlineExceeded)
            }
        }
    }

    /// The request provably never reached Cloud Tasks' processing: it failed locally
    /// (settings, task validation, credentials), no connection could be made, the server
    /// refused it unprocessed, or its attempt timed out before it was sent. Sending it again
    /// cannot create a duplicate.
    pub fn was_never_sent(&self) -> bool {
        self.is_config() || self.is_auth() || self.is_safe_to_resend_transient()
    }

    /// A transient failure of a request that was not processed: what the retry policy sends
    /// again for every task, named or not.
    pub(crate) fn is_safe_to_resend_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::NotProcessed { .. }
                | Self::Timeout {
                    request_sent: false,
                    ..
                }
        )
    }

    /// The failure is transient: the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        if let Self::AfterPossiblyProcessed { last, .. } = self {
            return last.is_transient();
        }
        matches!(
            self,
            Self::Timeout { .. } | Self::Connect { .. } | Self::NotProcessed { .. }
        ) || matches!(
            self.code(),
            Some(Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted)
        )
    }

    /// The request may have reached Cloud Tasks and created the task even though the call
    /// failed. Enqueuing again without a task name could create a duplicate.
    ///
    /// True for a call whose earlier attempt may have been processed, whatever its last
    /// attempt failed with ([`Error::AfterPossiblyProcessed`]), and for an HTTP/2 stream reset
    /// after the request was sent, whatever its code (RESET_STREAM ENHANCE_YOUR_CALM is
    /// RESOURCE_EXHAUSTED in gRPC's mapping, but unlike a quota refusal it does not say the
    /// call was not processed).
    pub fn task_may_exist(&self) -> bool {
        match self {
            Self::Timeout { request_sent, .. } => *request_sent,
            Self::OperationLost { .. } | Self::AfterPossiblyProcessed { .. } => true,
            Self::Rpc { status, .. } => {
                status.failed_in_transport
                    || matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Unknown
                            | Code::Internal
                            | Code::Cancelled
                    )
            }
            _ => false,
        }
    }
}

/// Where a call was going, for error messages that name the resource at fault.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallContext<'a> {
    pub(crate) endpoint: &'a str,
    pub(crate) queue: &'a str,
    pub(crate) service_account: &'a str,
    /// The RPC the status answers.
    pub(crate) call: Call<'a>,
}

/// Turns a status from Cloud Tasks into an [`Error`] whose message says what to do.
///
/// This is the only function in the crate that interprets status codes.
pub(crate) fn from_status(status: tonic::Status, call: CallContext<'_>) -> Error {
    let CallContext {
        endpoint,
        queue,
        service_account,
        call,
    } = call;
    if let Some(reason) = cause::<NotSent>(&status).map(|not_sent| not_sent.reason) {
        let endpoint = endpoint.to_owned();
        let detail = connect_detail(&status);
        let status = Status::new(status);
        return match reason {
            NotSentReason::Connect => Error::Connect {
                endpoint,
                detail,
                status,
            },
            _ => Error::NotProcessed {
                endpoint,
                detail: format!("{reason} ({detail})"),
                status,
            },
        };
    }
    let status = Status::new(status);
    let detail = status.message();
    let (project_location, queue_id) = queue.rsplit_once("/queues/").unwrap_or((queue, queue));
    let message = match status.code() {
        // The server did not answer this; HTTP/2 failed after the request was handed over
        // (REFUSED_STREAM and GOAWAY, which say it was not processed, are `NotProcessed`).
        code if status.failed_in_transport && !matches!(code, Code::Unavailable) => format!(
            "the HTTP/2 stream to Cloud Tasks at {endpoint} failed after the request was sent \
             ({code}: {detail}); Cloud Tasks may have processed it, so the task may or may not \
             exist. Check the queue before enqueuing again, or use de-duplicated (named) tasks"
        ),
        Code::NotFound => match call {
            Call::GetTask(task) | Call::DeleteTask(task) | Call::RunTask(task) => format!(
                "task {task} does not exist: it was never enqueued (or under another dedupe \
                 key), or it already finished or was deleted (Cloud Tasks keeps no finished \
                 task). A missing queue is answered the same way, so if no task is ever found, \
                 check CLOUD_TASKS_QUEUE / GCP_LOCATION / GCP_PROJECT_ID ({detail})"
            ),
            Call::GetOperation(operation) => format!(
                "operation {operation} does not exist: Cloud Tasks no longer knows it \
                 (operations expire) ({detail})"
            ),
            Call::ListTasks | Call::CreateTask | Call::BatchCreateTasks => format!(
                "queue {queue_id:?} does not exist in {project_location}: create it \
                 (`gcloud tasks queues create {queue_id}`) or fix CLOUD_TASKS_QUEUE / \
                 GCP_LOCATION / GCP_PROJECT_ID ({detail})"
            ),
        },
        Code::PermissionDenied => match call {
            Call::GetTask(_)
            | Call::DeleteTask(_)
            | Call::RunTask(_)
            | Call::ListTasks
            | Call::GetOperation(_) => {
                let rpc = call.rpc();
                let Requirement { permission, role } = rpc.requirement();
                // Task calls are granted on the queue (a task's name is under it); an
                // operation is under the project, and names itself.
                let resource = match call {
                    Call::GetOperation(operation) => operation,
                    _ => queue,
                };
                format!(
                    "permission denied: {rpc:?} needs {permission} on {resource} ({role}) \
                     ({detail})"
                )
            }
            // A refused batch is worded as a refused CreateTask: the same permissions.
            Call::CreateTask | Call::BatchCreateTasks => {
                let create = Rpc::CreateTask.requirement();
                format!(
                    "permission denied: creating tasks needs {create_permission} on {queue} \
                     ({create_role}, which also holds {full_view}, needed by bulk enqueue of \
                     unnamed tasks), and {act_as} on the OIDC service account \
                     {service_account} ({act_as_role}) ({detail})",
                    create_permission = create.permission,
                    create_role = create.role,
                    full_view = FULL_VIEW.permission,
                    act_as = ACT_AS.permission,
                    act_as_role = ACT_AS.role,
                )
            }
        },
        Code::AlreadyExists => format!(
            "a task with this name already exists in {queue}, or existed within about the last \
             hour; the document was already enqueued ({detail})"
        ),
        Code::InvalidArgument => {
            format!("Cloud Tasks rejected the request as invalid: {detail}")
        }
        Code::Unauthenticated => format!(
            "Cloud Tasks did not accept the credentials: {detail}. Run `gcloud auth \
             application-default login` locally, or check the service account attached to the \
             workload"
        ),
        Code::Unavailable | Code::DeadlineExceeded => format!(
            "Cloud Tasks is unavailable or timed out ({code:?}: {detail}); the task may or may \
             not exist. Check the queue before enqueuing again, or use de-duplicated (named) \
             tasks",
            code = status.code()
        ),
        Code::ResourceExhausted => format!(
            "Cloud Tasks quota exhausted for {queue}: {detail}. Slow down and retry later, or \
             raise the quota"
        ),
        // The server processed nothing: an endpoint that is not Cloud Tasks itself (an
        // emulator, a proxy) without this method, or a path no gRPC server serves.
        Code::Unimplemented => {
            let method = call.method();
            format!(
                "{endpoint} does not implement {method} (UNIMPLEMENTED: {detail}): an emulator \
                 without {method}, or another server that is not Cloud Tasks; nothing was done. \
                 Use Cloud Tasks, or an emulator that implements {method}, for this call"
            )
        }
        code => format!("Cloud Tasks call failed ({code:?}): {detail}"),
    };
    Error::Rpc { message, status }
}

/// The RPC a status answers: messages name it, and what NOT_FOUND and PERMISSION_DENIED mean
/// depends on it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call<'a> {
    /// `CreateTask` on the queue.
    CreateTask,
    /// `BatchCreateTasks` on the queue.
    BatchCreateTasks,
    /// `GetOperation` on this operation name (a batch's).
    GetOperation(&'a str),
    /// `GetTask` on this task name.
    GetTask(&'a str),
    /// `DeleteTask` on this task name.
    DeleteTask(&'a str),
    /// `RunTask` on this task name.
    RunTask(&'a str),
    /// `ListTasks` on the queue.
    ListTasks,
}

impl Call<'_> {
    /// The RPC's name, as the service defines it.
    pub(crate) const fn method(self) -> &'static str {
        self.rpc().method()
    }

    const fn rpc(self) -> Rpc {
        match self {
            Self::CreateTask => Rpc::CreateTask,
            Self::BatchCreateTasks => Rpc::BatchCreateTasks,
            Self::GetOperation(_) => Rpc::GetOperation,
            Self::GetTask(_) => Rpc::GetTask,
            Self::DeleteTask(_) => Rpc::DeleteTask,
            Self::RunTask(_) => Rpc::RunTask,
            Self::ListTasks => Rpc::ListTasks,
        }
    }
}

/// The innermost cause of a connection failure ("Connection refused", a TLS alert...), which
/// says more than tonic's "transport error".
fn connect_detail(status: &tonic::Status) -> String {
    let mut innermost = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        innermost = error.to_string();
        source = error.source();
    }
    innermost
}

fn cause<E: std::error::Error + 'static>(status: &tonic::Status) -> Option<&E> {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(cause) = error.downcast_ref::<E>() {
            return Some(cause);
        }
        source = error.source();
    }
    None
}

fn timeout_message(after: Duration, request_sent: bool) -> String {
    if request_sent {
        format!(
            "Cloud Tasks did not answer within {after:?}; the task may or may not exist. Check \
             the queue before enqueuing again, or use de-duplicated (named) tasks"
        )
    } else {
        format!(
            "the request could not be sent within {after:?} (waiting for credentials or a \
             connection to Cloud Tasks); nothing was sent, so no task was created"
        )
    }
}

/// A gRPC status code: the `google.rpc.Code` values.
///
/// Converts from and to the `i32` on the wire; a value this crate does not know becomes
/// [`Code::Unknown`]. `Display` gives the canonical name (`NOT_FOUND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // The variants are gRPC's, documented in google/rpc/code.proto.
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Self; 17] = [
        Self::Ok,
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The canonical name, as in `google/rpc/code.proto`: `NOT_FOUND`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::DataLoss => "DATA_LOSS",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl From<i32> for Code {
    fn from(value: i32) -> Self {
        usize::try_from(value)
            .ok()
            .and_then(|index| Self::ALL.get(index).copied())
            .unwrap_or(Self::Unknown)
    }
}

impl From<Code> for i32 {
    fn from(code: Code) -> Self {
        code as Self
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gRPC status a call ended with: its [`Code`], message and details.
///
/// The transport's own status (with the connection or HTTP/2 error under it) is the
/// [`source`](std::error::Error::source) of the [`Error`] that holds this.
#[derive(Clone)]
pub struct Status {
    code: Code,
    inner: Arc<tonic::Status>,
    /// The transport made this status from an HTTP/2 failure (a reset stream, a lost
    /// connection) rather than receiving it from the server.
    failed_in_transport: bool,
}

impl Status {
    pub(crate) fn new(status: tonic::Status) -> Self {
        Self {
            code: Code::from(i32::from(status.code())),
            failed_in_transport: cause::<h2::Error>(&status).is_some(),
            inner: Arc::new(status),
        }
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message the server (or the transport) gave.
    pub fn message(&self) -> &str {
        self.inner.message()
    }

    /// The details: an encoded `google.rpc.Status`, empty if there were none.
    pub fn details(&self) -> &[u8] {
        self.inner.details()
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.inner, f)
    }
}

/// Settings or builder values that cannot make a working client.
///
/// Lists every problem at once, each naming the variable, the bad value and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub(crate) problems: Vec<ConfigProblem>,
}

/// One missing or malformed setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The environment variable (or builder setting) at fault, e.g. `GCP_PROJECT_ID`.
    pub setting: &'static str,
    /// What is wrong with its value and how to fix it.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(problems: Vec<ConfigProblem>) -> Self {
        debug_assert!(!problems.is_empty());
        Self { problems }
    }

    /// Every problem found.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cloud Tasks is not configured correctly: ")?;
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", problem.setting, problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's codes are gRPC's, value for value, so `from_status` reads tonic's right.
    #[test]
    fn codes_are_grpcs() {
        for value in -1..=17 {
            let code = Code::from(value);
            let tonic_code = tonic::Code::from_i32(value);
            assert_eq!(i32::from(code), i32::from(tonic_code), "{value}");
            assert_eq!(format!("{code:?}"), format!("{tonic_code:?}"), "{value}");
        }
        assert_eq!(Code::from(99), Code::Unknown);
        assert_eq!(Code::NotFound.to_string(), "NOT_FOUND");
        assert_eq!(Code::Ok.to_string(), "OK");
    }

    /// The status's message and details are the error's, and the tonic status is its source.
    #[test]
    fn the_status_is_reachable_and_the_error_clones() {
        let call = CallContext {
            endpoint: "http://127.0.0.1:1",
            queue: "projects/p/locations/l/queues/q",
            service_account: "a@p.iam.gserviceaccount.com",
            call: Call::CreateTask,
        };
        let status = tonic::Status::with_details(
            tonic::Code::PermissionDenied,
            "denied",
            bytes::Bytes::from_static(b"details"),
        );
        let error = from_status(status, call).clone();
        assert_eq!(error.code(), Some(Code::PermissionDenied));
        assert_eq!(error.status_message(), Some("denied"));
        assert_eq!(error.status_details(), Some(&b"details"[..]));
        let source = std::error::Error::source(&error).unwrap();
        assert_eq!(
            source.downcast_ref::<tonic::Status>().unwrap().message(),
            "denied"
        );
    }

    /// UNIMPLEMENTED reads the same for every call: the endpoint, the call it lacks, and that
    /// nothing was done (so nothing may exist).
    #[test]
    fn unimplemented_names_the_call_and_the_endpoint() {
        let task = "projects/p/locations/l/queues/q/tasks/t";
        for call in [
            Call::CreateTask,
            Call::BatchCreateTasks,
            Call::GetOperation("projects/p/locations/l/operations/o"),
            Call::GetTask(task),
            Call::DeleteTask(task),
            Call::RunTask(task),
            Call::ListTasks,
        ] {
            let context = CallContext {
                endpoint: "http://127.0.0.1:9022",
                queue: "projects/p/locations/l/queues/q",
                service_account: "a@p.iam.gserviceaccount.com",
                call,
            };
            let error = from_status(tonic::Status::unimplemented("Method not found!"), context);
            let method = call.method();
            assert_eq!(
                error.to_string(),
                format!(
                    "http://127.0.0.1:9022 does not implement {method} (UNIMPLEMENTED: Method \
                     not found!): an emulator without {method}, or another server that is not \
                     Cloud Tasks; nothing was done. Use Cloud Tasks, or an emulator that \
                     implements {method}, for this call"
                )
            );
            assert!(error.is_unimplemented());
            assert!(!error.task_may_exist(), "{method}");
        }
    }
}
