//! What the crate tells an observer, from one layer around each call (`ARCHITECTURE.md`,
//! "Observability from one layer"; the README's "Observability" lists every name).
//!
//! - Spans, always, with `tracing` (nothing is recorded without a subscriber): one per logical
//!   call (`CallRecord`, made by the client) and one per attempt (`CallRecord::attempt`, made by
//!   `retry.rs`, the one place that runs attempts); on the receiving side one processing span
//!   per delivery (`receiving.rs`).
//! - With the `opentelemetry` feature: the trace context written into each task's headers and
//!   restored by the receiver (`context.rs`), and metrics through OpenTelemetry's metrics API
//!   (`metrics.rs`). Without it those calls are empty and no OpenTelemetry crate is compiled.
//!
//! Attribute, metric and header names are the public constants of this module, defined once.

#[cfg(feature = "opentelemetry")]
pub(crate) mod context;
#[cfg(feature = "opentelemetry")]
mod metrics;
#[cfg(feature = "receiver")]
pub(crate) mod receiving;

#[cfg(feature = "opentelemetry")]
pub use context::parse_traceparent;

#[cfg(feature = "opentelemetry")]
use std::time::Instant;

use tracing::Span;
use tracing::field::Empty;

use crate::client::Enqueued;
use crate::error::{Code, Error};

/// `messaging.system`: OpenTelemetry's messaging conventions have no value for Cloud Tasks, so
/// this crate uses `gcp_cloud_tasks`, after the conventions' `gcp_pubsub`.
pub const MESSAGING_SYSTEM_VALUE: &str = "gcp_cloud_tasks";

/// The header that carries the producer's W3C `traceparent` through Cloud Tasks unchanged.
///
/// Google's front ends rewrite an incoming `traceparent`'s parent span ID to a span of their
/// own (exported only to Cloud Trace), so the `traceparent` a handler receives no longer names
/// the enqueue span. The enqueue side writes its context into both headers, and the receiver
/// prefers this one. Cloud Tasks passes every task header through except its own and
/// `X-Google-*`/`X-AppEngine-*`.
pub const ENQUEUE_TRACEPARENT_HEADER: &str = "x-enqueue-traceparent";
/// W3C Trace Context's `traceparent` header.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// W3C Trace Context's `tracestate` header.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Span attribute names: OpenTelemetry's RPC and messaging conventions, and this crate's own.
pub mod attributes {
    /// `grpc`.
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    /// The fully qualified method, e.g. `google.cloud.tasks.v2.CloudTasks/CreateTask`.
    pub const RPC_METHOD: &str = "rpc.method";
    /// The gRPC status code name of a failed call or attempt, e.g. `UNAVAILABLE`.
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    /// The endpoint's host.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// The endpoint's port.
    pub const SERVER_PORT: &str = "server.port";
    /// Why a call, attempt or processing failed: a gRPC code name or one of this crate's
    /// error kinds (`timeout`, `not_processed`, `connect`, ...).
    pub const ERROR_TYPE: &str = "error.type";
    /// Set on an attempt that resends the call: the number of earlier attempts.
    pub const RESEND_COUNT: &str = "http.request.resend_count";
    /// [`MESSAGING_SYSTEM_VALUE`](super::MESSAGING_SYSTEM_VALUE).
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// `send`, `create` or `process`.
    pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
    /// `send`, `create` or `process`: the conventions' operation type.
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    /// The queue's full name on the enqueue side; its short ID (`X-CloudTasks-QueueName`) on
    /// the receiving side.
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    /// The task's name (full on the enqueue side, short on the receiving side).
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    /// Tasks in one `BatchCreateTasks` call.
    pub const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
    /// `X-CloudTasks-TaskRetryCount`: attempts before this delivery.
    pub const RETRY_COUNT: &str = "messaging.gcp_cloud_tasks.task.retry_count";
    /// A task's outcome: `created`, `already_exists`, `failed` when enqueued; `done`,
    /// `retry_later`, `give_up` when processed.
    pub const OUTCOME: &str = "messaging.gcp_cloud_tasks.outcome";
    /// The document a task processes.
    pub const DOCUMENT_ID: &str = "cloud_tasks.document_id";
    /// The status a refused delivery was answered with.
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
    /// Which check refused a delivery's OIDC token (`signature`, `aud`, `exp`, ... as
    /// `VerifyError::check` names it).
    pub const REJECTED_CHECK: &str = "gcp_cloud_tasks.receiver.check";
}

/// Metric names. The call and attempt histograms take Google's names, the task and processing
/// ones OpenTelemetry's messaging conventions' (`ARCHITECTURE.md` says why).
pub mod metric_names {
    /// Histogram (s): one logical call, its retries included.
    pub const CALL_DURATION: &str = "gcp.client.request.duration";
    /// Histogram (s): one attempt.
    pub const ATTEMPT_DURATION: &str = "gcp.client.attempt.duration";
    /// Counter: tasks enqueued, by [`OUTCOME`](super::attributes::OUTCOME) (and
    /// `rpc.response.status_code`, `error.type` for a failure).
    pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
    /// Counter: attempts sent again, by method and the failure that caused it.
    pub const RETRIES: &str = "gcp_cloud_tasks.client.retries";
    /// Gauge (tasks/s): the bulk enqueue's current pace under its rate limit.
    pub const PACE: &str = "gcp_cloud_tasks.client.pace";
    /// Histogram (s): one delivery's processing, by its outcome.
    pub const PROCESS_DURATION: &str = "messaging.process.duration";
    /// Counter: deliveries refused before processing, by `error.type` (`token`, `headers`,
    /// `payload`), the token check that failed and the status answered.
    pub const REJECTED_DELIVERIES: &str = "gcp_cloud_tasks.receiver.rejected_deliveries";
}

use attributes as attr;

/// The RPCs, one list for permissions, error wording and telemetry.
pub(crate) use crate::permissions::Rpc;

/// The endpoint (and queue) as the spans and metrics name them, worked out once per client.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    address: String,
    port: u16,
    /// The address once more, shared by every metric point.
    #[cfg(feature = "opentelemetry")]
    metric_address: opentelemetry::StringValue,
    /// The client's queue, shared by every metric point.
    #[cfg(feature = "opentelemetry")]
    metric_queue: opentelemetry::StringValue,
}

impl Server {
    pub(crate) fn new(endpoint: &str, queue: &str) -> Self {
        let url = url::Url::parse(endpoint).ok();
        let address = url
            .as_ref()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default();
        let port = url
            .as_ref()
            .and_then(url::Url::port_or_known_default)
            .unwrap_or(443);
        #[cfg(not(feature = "opentelemetry"))]
        let _ = queue;
        Self {
            #[cfg(feature = "opentelemetry")]
            metric_address: std::sync::Arc::<str>::from(address.as_str()).into(),
            #[cfg(feature = "opentelemetry")]
            metric_queue: std::sync::Arc::<str>::from(queue).into(),
            address,
            port,
        }
    }
}

/// One logical call: its span, open over every attempt, and when it started.
#[derive(Debug)]
pub(crate) struct CallRecord<'a> {
    rpc: Rpc,
    server: &'a Server,
    span: Span,
    #[cfg(feature = "opentelemetry")]
    started: Instant,
}

impl<'a> CallRecord<'a> {
    /// A call that enqueues: the messaging conventions' `send` span (PRODUCER), named
    /// `send {queue ID}`, with the RPC's attributes too. `batch` is the task count of a
    /// `BatchCreateTasks` call.
    pub(crate) fn send(
        rpc: Rpc,
        server: &'a Server,
        queue: &str,
        batch: Option<usize>,
        document: Option<uuid::Uuid>,
    ) -> Self {
        // Counts are recorded as i64: OpenTelemetry's integer type, which tracing's unsigned
        // values do not all map to.
        let span = tracing::info_span!(
            "send",
            otel.name = format!("send {}", queue_id(queue)),
            otel.kind = "producer",
            otel.status_code = Empty,
            { attr::MESSAGING_SYSTEM } = MESSAGING_SYSTEM_VALUE,
            { attr::MESSAGING_OPERATION_NAME } = "send",
            { attr::MESSAGING_OPERATION_TYPE } = "send",
            { attr::MESSAGING_DESTINATION_NAME } = queue,
            { attr::MESSAGING_MESSAGE_ID } = Empty,
            { attr::MESSAGING_BATCH_MESSAGE_COUNT } = batch.and_then(|n| i64::try_from(n).ok()),
            { attr::DOCUMENT_ID } = document.map(display),
            { attr::RPC_SYSTEM_NAME } = "grpc",
            { attr::RPC_METHOD } = rpc.full_method(),
            { attr::SERVER_ADDRESS } = server.address.as_str(),
            { attr::SERVER_PORT } = i64::from(server.port),
            { attr::ERROR_TYPE } = Empty,
            { attr::RPC_RESPONSE_STATUS_CODE } = Empty,
        );
        Self::with_span(rpc, server, span)
    }

    /// Any other call (reading, deleting, running or listing tasks): a CLIENT span named after
    /// the method.
    pub(crate) fn rpc(rpc: Rpc, server: &'a Server, resource: &str) -> Self {
        let span = tracing::info_span!(
            "rpc",
            otel.name = rpc.full_method(),
            otel.kind = "client",
            otel.status_code = Empty,
            { attr::RPC_SYSTEM_NAME } = "grpc",
            { attr::RPC_METHOD } = rpc.full_method(),
            { attr::SERVER_ADDRESS } = server.address.as_str(),
            { attr::SERVER_PORT } = i64::from(server.port),
            { attr::MESSAGING_DESTINATION_NAME } = resource,
            { attr::ERROR_TYPE } = Empty,
            { attr::RPC_RESPONSE_STATUS_CODE } = Empty,
        );
        Self::with_span(rpc, server, span)
    }

    fn with_span(rpc: Rpc, server: &'a Server, span: Span) -> Self {
        Self {
            rpc,
            server,
            span,
            #[cfg(feature = "opentelemetry")]
            started: Instant::now(),
        }
    }

    /// The call's span: the caller runs the call inside it.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Starts attempt number `attempt` (1-based): a CLIENT span under the call's, named after
    /// the method, with the resend count from the second attempt on.
    pub(crate) fn attempt(&self, attempt: u32) -> AttemptRecord<'_> {
        let span = tracing::info_span!(
            parent: &self.span,
            "attempt",
            otel.name = self.rpc.full_method(),
            otel.kind = "client",
            otel.status_code = Empty,
            { attr::RPC_SYSTEM_NAME } = "grpc",
            { attr::RPC_METHOD } = self.rpc.full_method(),
            { attr::SERVER_ADDRESS } = self.server.address.as_str(),
            { attr::SERVER_PORT } = i64::from(self.server.port),
            { attr::RESEND_COUNT } = (attempt > 1).then(|| i64::from(attempt - 1)),
            { attr::ERROR_TYPE } = Empty,
            { attr::RPC_RESPONSE_STATUS_CODE } = Empty,
        );
        AttemptRecord {
            #[cfg(feature = "opentelemetry")]
            call: self,
            #[cfg(not(feature = "opentelemetry"))]
            call: std::marker::PhantomData,
            span,
            #[cfg(feature = "opentelemetry")]
            started: Instant::now(),
        }
    }

    /// The call is sent again after `error`.
    pub(crate) fn retrying(&self, error: &Error) {
        #[cfg(feature = "opentelemetry")]
        metrics::retry(self.rpc, error);
        #[cfg(not(feature = "opentelemetry"))]
        let _ = error;
    }

    /// Records the call's outcome (`None`: success) on its span and in the call duration histogram.
    pub(crate) fn finish(&self, error: Option<&Error>) {
        if let Some(error) = error {
            record_error(&self.span, error);
        }
        #[cfg(feature = "opentelemetry")]
        metrics::call_duration(self.rpc, self.server, self.started.elapsed(), error);
    }

    /// Links this `send` span to the `create` span of each task, from the context the task
    /// carries (feature `opentelemetry`; without it there is none).
    pub(crate) fn link_tasks(&self, tasks: &[crate::proto::Task]) {
        #[cfg(feature = "opentelemetry")]
        for task in tasks {
            if let Some(created) = context::of_task(task) {
                tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&self.span, created);
            }
        }
        #[cfg(not(feature = "opentelemetry"))]
        let _ = tasks;
    }

    /// Records the created task's name on an enqueue's span.
    pub(crate) fn created(&self, task_name: &str) {
        self.span.record(attr::MESSAGING_MESSAGE_ID, task_name);
    }
}

/// One attempt of a [`CallRecord`].
#[derive(Debug)]
pub(crate) struct AttemptRecord<'a> {
    #[cfg(feature = "opentelemetry")]
    call: &'a CallRecord<'a>,
    #[cfg(not(feature = "opentelemetry"))]
    call: std::marker::PhantomData<&'a ()>,
    span: Span,
    #[cfg(feature = "opentelemetry")]
    started: Instant,
}

impl AttemptRecord<'_> {
    /// The attempt's span: `retry.rs` runs the attempt inside it.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Records the attempt's outcome (`None`: success) on its span and in the attempt duration histogram.
    pub(crate) fn finish(self, error: Option<&Error>) {
        if let Some(error) = error {
            record_error(&self.span, error);
        }
        #[cfg(feature = "opentelemetry")]
        metrics::attempt_duration(
            self.call.rpc,
            self.call.server,
            self.started.elapsed(),
            error,
        );
    }
}

/// `error.type`, `rpc.response.status_code` and the error status on `span`.
fn record_error(span: &Span, error: &Error) {
    span.record(attr::ERROR_TYPE, error_type(error));
    if let Some(code) = response_code(error) {
        span.record(attr::RPC_RESPONSE_STATUS_CODE, code.as_str());
    }
    span.record("otel.status_code", "error");
}

/// The code Cloud Tasks answered with, if it answered.
pub(crate) fn response_code(error: &Error) -> Option<Code> {
    match error {
        Error::Rpc { .. } | Error::OperationLost { .. } => error.code(),
        _ => None,
    }
}

/// The low-cardinality `error.type` of `error`: the gRPC code name when Cloud Tasks answered,
/// otherwise the kind of failure.
pub(crate) fn error_type(error: &Error) -> &'static str {
    if let Some(code) = response_code(error) {
        return code.as_str();
    }
    match error {
        Error::Config(_) => "config",
        Error::InvalidTask(_) => "invalid_task",
        Error::Connect { .. } => "connect",
        Error::NotProcessed { .. } => "not_processed",
        Error::Timeout { .. } => "timeout",
        Error::Auth { .. } => "auth",
        Error::Transport { .. } => "transport",
        Error::Rpc { .. } | Error::OperationLost { .. } => "rpc",
        Error::AfterPossiblyProcessed { last, .. } => error_type(last),
    }
}

/// The enqueue outcome of one task for `server`'s queue, counted by outcome (and code) when
/// the feature is on.
pub(crate) fn task_outcome(server: &Server, result: &Result<Enqueued, Error>) {
    #[cfg(feature = "opentelemetry")]
    metrics::task_outcome(server, result);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (server, result);
}

/// The outcomes a bulk enqueue hands back, each counted as [`task_outcome`] does.
pub(crate) fn task_outcomes<K>(server: &Server, outcomes: &[(K, Result<Enqueued, Error>)]) {
    for (_, outcome) in outcomes {
        task_outcome(server, outcome);
    }
}

/// The bulk pace changed or was read: `tasks_per_second` under the rate limit.
pub(crate) fn pace(tasks_per_second: f64) {
    #[cfg(feature = "opentelemetry")]
    metrics::pace(tasks_per_second);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = tasks_per_second;
}

/// A batch's per-document `create` span (PRODUCER), made when the task is queued: the task
/// carries its context, and the batch's `send` span links to it, as the messaging conventions
/// describe for batches.
pub(crate) fn create_span(queue: &str, document: Option<uuid::Uuid>) -> Span {
    tracing::info_span!(
        "create",
        otel.name = format!("create {}", queue_id(queue)),
        otel.kind = "producer",
        { attr::MESSAGING_SYSTEM } = MESSAGING_SYSTEM_VALUE,
        { attr::MESSAGING_OPERATION_NAME } = "create",
        { attr::MESSAGING_OPERATION_TYPE } = "create",
        { attr::MESSAGING_DESTINATION_NAME } = queue,
        { attr::DOCUMENT_ID } = document.map(display),
    )
}

/// Writes the current trace context into a task's headers (feature `opentelemetry`; without
/// it, nothing: there is no context to write).
pub(crate) fn inject_context(headers: &mut Vec<(String, String)>) {
    #[cfg(feature = "opentelemetry")]
    context::inject(headers);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = headers;
}

/// The queue's short ID, the last segment of its full name.
pub(crate) fn queue_id(queue: &str) -> &str {
    queue.rsplit('/').next().unwrap_or(queue)
}
