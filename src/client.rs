//! `CloudTasksClient`: builds tasks for the backend's queue and sends them with `CreateTask`.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use google_cloud_auth::credentials::Credentials;
use http::{HeaderMap, HeaderValue};
use tonic::metadata::MetadataMap;
use tracing::Instrument;
use uuid::Uuid;

#[cfg(doc)]
use crate::BatchOptions;
use crate::auth::{self, Auth};
use crate::config::{Settings, Target};
use crate::error::{self, Call, CallContext, Error};
use crate::proto::{CreateTaskRequest, RawCloudTasksClient, Task};
use crate::rate::Pacer;
use crate::retry::{self, Attempt, Attempted, Idempotency, Pace, RetryPolicy};
use crate::task::{DocumentTask, HttpTask, NewTask};
use crate::telemetry::{self, CallRecord, Rpc, Server};
use crate::transport::{ConnectionOptions, Http2Channel, Security, SetupError};

/// Google's global Cloud Tasks endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://cloudtasks.googleapis.com";
/// Per-attempt deadline of a `CreateTask` call, as in Google's own clients.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of a whole call, retries included.
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long establishing a connection may take before the calls waiting for it fail.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections a client opens at most to its endpoint: each carries at most the server's
/// stream limit (100 at Google) of concurrent calls; calls beyond wait for room.
pub const DEFAULT_MAX_CONNECTIONS: usize = 8;
/// A connection without calls is checked with an HTTP/2 PING after this long without a frame:
/// the least gRPC servers (C-core, Go) accept by default on a connection without calls; more
/// frequent PINGs there count as strikes, and past two strikes the server closes the
/// connection with GOAWAY "too_many_pings". TCP keepalive finds dead idle peers sooner.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
/// How long a connection with calls outstanding may receive nothing before it is closed (a
/// PING goes out after half of it), and how long an idle PING may go unanswered: gRPC's
/// default keepalive timeout. Also the connection's TCP_USER_TIMEOUT on Linux.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive idle time and probe interval. On Linux, with TCP_USER_TIMEOUT at the
/// keepalive timeout, the kernel closes an idle connection whose peer is gone about 30 s after
/// it fell silent (a probe after 15 s, unanswered past 20 s, checked at the next probe); the
/// server sees none of this.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// Set per attempt from its deadline.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

const USER_AGENT: &str = concat!("cloud-tasks-rs/", env!("CARGO_PKG_VERSION"));

/// A client for one queue and one receiving backend.
///
/// Cheap to clone: clones share one lazily connected HTTP/2 channel and one set of credentials.
/// Build it with [`CloudTasksClient::builder`] or [`CloudTasksClient::from_settings`], inside a
/// Tokio runtime.
///
/// ```no_run
/// # async fn run() -> Result<(), cloud_tasks::Error> {
/// use cloud_tasks::{CloudTasksClient, Settings};
///
/// let settings = Settings::from_env()?;
/// let client = CloudTasksClient::from_settings(&settings)?;
/// let enqueued = client
///     .create_document_processing_task(uuid::Uuid::new_v4(), "report.pdf")
///     .await?;
/// println!("enqueued {}", enqueued.task_name());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CloudTasksClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    target: Target,
    endpoint: String,
    stub: RawCloudTasksClient<Http2Channel>,
    channel: Http2Channel,
    auth: Auth,
    server: Server,
    /// Routing and client-identity headers, computed once.
    call_headers: HeaderMap,
    /// The `grpc-timeout` value for `attempt_timeout`, the deadline of almost every attempt,
    /// formatted once.
    attempt_timeout_header: Option<HeaderValue>,
    attempt_timeout: Duration,
    total_timeout: Duration,
    retry_policy: RetryPolicy,
    /// The endpoint answered `BatchCreateTasks` with UNIMPLEMENTED: bulk enqueues send one
    /// `CreateTask` per task from then on.
    batch_create_unimplemented: AtomicBool,
}

impl CloudTasksClient {
    /// Starts a builder; every value it needs is set with a `with_*` method.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for the queue and backend named by `settings`, talking to the emulator when
    /// `CLOUD_TASKS_EMULATOR_HOST` is set and to Google with Application Default Credentials
    /// otherwise.
    ///
    /// # Errors
    /// [`Error::Config`] listing every missing or malformed setting; [`Error::Auth`] if the
    /// credentials cannot be loaded.
    pub fn from_settings(settings: &Settings) -> Result<Self, Error> {
        let builder = Self::builder()
            .with_project_id(&settings.gcp_project_id)
            .with_location(&settings.gcp_location)
            .with_queue(&settings.cloud_tasks_queue)
            .with_service_url(&settings.cloud_run_service_url)
            .with_service_account_email(&settings.cloud_run_service_account);
        match &settings.emulator_host {
            Some(host) => builder.with_emulator_host(host),
            None => builder,
        }
        .build()
    }

    /// `projects/{project}/locations/{location}/queues/{queue}`.
    pub fn queue_path(&self) -> &str {
        self.inner.target.queue_path()
    }

    /// The validated queue and backend this client enqueues for.
    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// The endpoint calls go to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Whether this client's endpoint answered a `BatchCreateTasks` call with UNIMPLEMENTED,
    /// as emulators without it do. From then on [`CloudTasksClient::enqueue_all`] and
    /// [`CloudTasksClient::batch_enqueuer`] send one `CreateTask` per task, at the same pace
    /// and concurrency, for the rest of the client's life (and of its clones'): a client
    /// talks to one endpoint, whose server does not grow a method between two calls, and
    /// asking again in every bulk enqueue would cost a refused call each time. A server that
    /// gains the method later is only used less efficiently until the client is rebuilt.
    pub fn batch_create_tasks_unimplemented(&self) -> bool {
        self.inner
            .batch_create_unimplemented
            .load(Ordering::Relaxed)
    }

    /// Remembers that the endpoint does not implement `BatchCreateTasks`; `true` for the call
    /// that learned it first, which says so.
    pub(crate) fn note_batch_create_unimplemented(&self) -> bool {
        !self
            .inner
            .batch_create_unimplemented
            .swap(true, Ordering::Relaxed)
    }

    /// The full name a task with `task_id` gets in this client's queue.
    pub fn task_name(&self, task_id: &str) -> String {
        format!("{}/tasks/{task_id}", self.queue_path())
    }

    /// Enqueues processing of an uploaded document, as the Python backend did:
    /// `POST {service_url}/api/tasks/process-document` with the JSON body
    /// `{"document_id": ..., "filename": ...}`, an OIDC token for the service account with the
    /// service URL as audience, and a 600 s dispatch deadline.
    ///
    /// The same as [`CloudTasksClient::enqueue`] with `DocumentTask::new(document_id, filename)`
    /// and the client's deadlines. The task is unnamed, as the Python backend's was, so a call
    /// that may have reached Cloud Tasks is never sent again ([`Error::task_may_exist`] tells
    /// the caller), and the outcome is always [`Enqueued::Created`]. For enqueuing that is safe
    /// to repeat, use [`CloudTasksClient::enqueue`] with [`DocumentTask::deduplicated`].
    ///
    /// # Errors
    /// See [`CloudTasksClient::enqueue`].
    pub async fn create_document_processing_task(
        &self,
        document_id: Uuid,
        filename: &str,
    ) -> Result<Enqueued, Error> {
        self.enqueue(
            DocumentTask::new(document_id, filename),
            &CallOptions::default(),
        )
        .await
    }

    /// Enqueues one task: a [`DocumentTask`] for the backend's processing endpoint, or any
    /// [`HttpTask`] (its path under the service URL, with the client's OIDC token). `options`
    /// override the client's deadlines and retry policy (`&CallOptions::new()` keeps them).
    ///
    /// For a named task (de-duplicated, or with a task ID), ALREADY_EXISTS is an outcome, not
    /// an error: [`Enqueued::AlreadyExists`], because the task was enqueued before, or by an
    /// earlier attempt of this very call whose answer was lost.
    ///
    /// # Errors
    /// [`Error::InvalidTask`] before anything is sent if the task breaks a Cloud Tasks rule;
    /// otherwise what Cloud Tasks answered ([`Error::Rpc`]), [`Error::Connect`],
    /// [`Error::NotProcessed`], [`Error::Timeout`], or [`Error::Auth`]. Check
    /// [`Error::task_may_exist`] before enqueuing an unnamed task again.
    pub async fn enqueue(
        &self,
        task: impl Into<NewTask>,
        options: &CallOptions,
    ) -> Result<Enqueued, Error> {
        let task = task.into();
        let call = CallRecord::send(
            telemetry::Rpc::CreateTask,
            &self.inner.server,
            self.queue_path(),
            None,
            task.document_id(),
        );
        // The task carries the context of its own send span.
        let result = match call
            .span()
            .in_scope(|| self.task_proto(task.into_http_task(false)?))
        {
            Ok(task) => {
                self.enqueue_validated(&call, task, options, None)
                    .instrument(call.span().clone())
                    .await
            }
            Err(error) => {
                call.finish(Some(&error));
                Err(error)
            }
        };
        telemetry::task_outcome(&self.inner.server, &result);
        result
    }

    /// Checks `task` against Cloud Tasks' rules and builds the proto `Task` for this client's
    /// queue and backend, carrying the current trace context in its headers.
    pub(crate) fn task_proto(&self, mut task: HttpTask) -> Result<Task, Error> {
        telemetry::inject_context(&mut task.headers);
        let target = &self.inner.target;
        task.into_proto(
            target.queue_path(),
            target.service_url(),
            target.service_account_email(),
            SystemTime::now(),
        )
    }

    /// Sends a validated task under the retry policy; a named task refused as ALREADY_EXISTS
    /// is [`Enqueued::AlreadyExists`].
    pub(crate) async fn enqueue_validated(
        &self,
        call: &CallRecord<'_>,
        task: Task,
        options: &CallOptions,
        pacer: Option<&Pacer>,
    ) -> Result<Enqueued, Error> {
        let task_name = (!task.name.is_empty()).then(|| task.name.clone());
        let Attempted { result, attempts } =
            self.create_validated(call, task, options, pacer).await;
        match (result, task_name) {
            (Ok(task), _) => Ok(Enqueued::created(task)),
            (Err(error), Some(task_name)) if error.is_already_exists() => {
                call.created(&task_name);
                tracing::info!(
                    task = %task_name,
                    attempts,
                    "task already exists; not enqueued again"
                );
                Ok(Enqueued::AlreadyExists { task_name })
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Sends a validated task with `CreateTask` under the retry policy, and logs the outcome.
    ///
    /// A named task is idempotent (Cloud Tasks refuses a second task with its name), so it may
    /// be retried wherever an unnamed one may not. With a `pacer` (bulk enqueue), every resend
    /// waits for its turn and a RESOURCE_EXHAUSTED answer slows the pacer down.
    pub(crate) async fn create_validated(
        &self,
        call: &CallRecord<'_>,
        task: Task,
        options: &CallOptions,
        pacer: Option<&Pacer>,
    ) -> Attempted<Task> {
        let target = &self.inner.target;
        let started = Instant::now();
        let idempotency = if task.name.is_empty() {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        let request = CreateTaskRequest {
            parent: target.queue_path().to_owned(),
            task: Some(task),
            ..CreateTaskRequest::default()
        };
        let policy = options
            .retry_policy
            .as_ref()
            .unwrap_or(&self.inner.retry_policy);
        let attempt_timeout = options
            .attempt_timeout
            .unwrap_or(self.inner.attempt_timeout);
        let total_timeout = options.total_timeout.unwrap_or(self.inner.total_timeout);
        let outcome = retry::run(
            call,
            policy,
            idempotency,
            attempt_timeout,
            total_timeout,
            pacer.map(|pacer| Pace { pacer, tasks: 1 }),
            |attempt| self.send_create_task(&request, attempt),
        )
        .await;
        let latency_ms = started.elapsed().as_millis();
        match &outcome.result {
            Ok(created) => {
                call.created(&created.name);
                call.finish(None);
                tracing::info!(
                    queue = target.queue_path(),
                    task = %created.name,
                    attempts = outcome.attempts,
                    latency_ms,
                    "enqueued task"
                );
            }
            // ALREADY_EXISTS of a named task is the call's success, as the caller reports it.
            Err(error) if idempotency == Idempotency::Idempotent && error.is_already_exists() => {
                call.finish(None);
            }
            Err(error) => {
                call.finish(Some(error));
                tracing::warn!(
                    queue = target.queue_path(),
                    attempts = outcome.attempts,
                    latency_ms,
                    task_may_exist = error.task_may_exist(),
                    %error,
                    "CreateTask failed"
                );
            }
        }
        outcome
    }

    /// One `CreateTask` attempt. It takes the request by reference and clones it only when the
    /// call is sent: each attempt needs its own copy (tonic consumes it), and a request carried
    /// by value would be copied again into every future wrapped around the attempt.
    async fn send_create_task(
        &self,
        request: &CreateTaskRequest,
        attempt: Attempt,
    ) -> Result<Task, Error> {
        let request = self.prepare(request.clone(), attempt).await?;
        let mut stub = self.raw_stub();
        self.map_response(stub.create_task(request).await, Call::CreateTask)
    }

    /// Runs `attempt` under the retry policy and deadlines of `options`, falling back to the
    /// client's, as one call of `rpc` on `resource` (a task, an operation or the queue): in
    /// its span, and recorded when it ends.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        rpc: Rpc,
        resource: &str,
        options: &CallOptions,
        idempotency: Idempotency,
        attempt: F,
    ) -> Attempted<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let call = CallRecord::rpc(rpc, &self.inner.server, resource);
        let outcome = self
            .retried(&call, options, idempotency, attempt)
            .instrument(call.span().clone())
            .await;
        call.finish(outcome.result.as_ref().err());
        outcome
    }

    /// Runs `attempt` as [`CloudTasksClient::with_retries`] does, as part of `call`, which the
    /// caller runs and finishes.
    pub(crate) async fn retried<T, F, Fut>(
        &self,
        call: &CallRecord<'_>,
        options: &CallOptions,
        idempotency: Idempotency,
        attempt: F,
    ) -> Attempted<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.with_paced_retries(call, options, idempotency, None, attempt)
            .await
    }

    /// [`Self::with_retries`], with each resend waiting for its turn under `pace`.
    pub(crate) async fn with_paced_retries<T, F, Fut>(
        &self,
        call: &CallRecord<'_>,
        options: &CallOptions,
        idempotency: Idempotency,
        pace: Option<Pace<'_>>,
        attempt: F,
    ) -> Attempted<T>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let inner = &*self.inner;
        retry::run(
            call,
            options.retry_policy.as_ref().unwrap_or(&inner.retry_policy),
            idempotency,
            options.attempt_timeout.unwrap_or(inner.attempt_timeout),
            options.total_timeout.unwrap_or(inner.total_timeout),
            pace,
            attempt,
        )
        .await
    }

    /// Wraps `message` with the routing, client-identity and credential metadata every call to
    /// this client's queue carries, the attempt's deadline, and the flag the transport sets
    /// when it sends the request.
    pub(crate) async fn prepare<T>(
        &self,
        message: T,
        attempt: Attempt,
    ) -> Result<tonic::Request<T>, Error> {
        let metadata = self.call_metadata(attempt.budget).await?;
        let mut extensions = tonic::Extensions::default();
        extensions.insert(attempt.written);
        Ok(tonic::Request::from_parts(metadata, extensions, message))
    }

    /// `message` prepared as by [`CloudTasksClient::prepare`], but routed by `name` (a task's
    /// or an operation's) instead of the queue, as Google requires for calls on one resource.
    pub(crate) async fn prepare_by_name<T>(
        &self,
        message: T,
        name: &str,
        attempt: Attempt,
    ) -> Result<tonic::Request<T>, Error> {
        let mut request = self.prepare(message, attempt).await?;
        request
            .metadata_mut()
            .insert("x-goog-request-params", auth::routing_value("name", name));
        Ok(request)
    }

    /// The routing, client-identity and credential metadata of a call to this client's queue,
    /// and `grpc-timeout`: tells Cloud Tasks how long the caller waits (`retry.rs` enforces it
    /// on this side).
    async fn call_metadata(&self, timeout: Duration) -> Result<MetadataMap, Error> {
        let inner = &*self.inner;
        // Sized for what every call adds, so no insert reallocates; not larger, since a big map
        // costs more to allocate than it saves (PERFORMANCE.md).
        let mut headers = HeaderMap::with_capacity(inner.call_headers.len() + 4);
        for (name, value) in &inner.call_headers {
            headers.insert(name, value.clone());
        }
        inner.auth.add_headers(&mut headers).await?;
        let grpc_timeout = match &inner.attempt_timeout_header {
            Some(value) if timeout == inner.attempt_timeout => Some(value.clone()),
            _ => grpc_timeout_header(timeout),
        };
        if let Some(value) = grpc_timeout {
            headers.insert(GRPC_TIMEOUT, value);
        }
        Ok(MetadataMap::from_headers(headers))
    }

    /// The result of one attempt of `call`, its failure mapped.
    pub(crate) fn map_response<T>(
        &self,
        result: Result<tonic::Response<T>, tonic::Status>,
        call: Call<'_>,
    ) -> Result<T, Error> {
        result
            .map(tonic::Response::into_inner)
            .map_err(|status| self.status_error(status, call))
    }

    /// The client's retry policy, which bulk calls start from.
    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.inner.retry_policy
    }

    /// The generated stub over the shared channel.
    pub(crate) fn raw_stub(&self) -> RawCloudTasksClient<Http2Channel> {
        self.inner.stub.clone()
    }

    /// The shared HTTP/2 channel, for other services on the same endpoint (long-running
    /// operations).
    pub(crate) fn channel(&self) -> Http2Channel {
        self.inner.channel.clone()
    }

    /// The endpoint as spans and metrics name it.
    pub(crate) fn server(&self) -> &Server {
        &self.inner.server
    }

    /// Maps a status `call` received for this client's queue: a whole call's, or one task's
    /// of a batch.
    pub(crate) fn status_error(&self, status: tonic::Status, call: Call<'_>) -> Error {
        error::from_status(
            status,
            CallContext {
                endpoint: &self.inner.endpoint,
                queue: self.inner.target.queue_path(),
                service_account: self.inner.target.service_account_email(),
                call,
            },
        )
    }
}

/// Where calls go and how they authenticate.
#[derive(Debug, Clone)]
enum Transport {
    /// TLS to Google (or a regional/private endpoint) with Google credentials.
    Google {
        endpoint: String,
        credentials: Option<Credentials>,
    },
    /// Plaintext to an emulator at `host:port`, without credentials.
    Emulator { host: String },
}

/// Per-call overrides of the client's deadlines and retry policy.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct CallOptions {
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) total_timeout: Option<Duration>,
    pub(crate) retry_policy: Option<RetryPolicy>,
}

impl CallOptions {
    /// The client's defaults.
    pub const fn new() -> Self {
        Self {
            attempt_timeout: None,
            total_timeout: None,
            retry_policy: None,
        }
    }

    /// Deadline of each attempt.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Deadline of the whole call, retries included.
    pub fn with_total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// When failed attempts are sent again.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }
}

/// What a successful enqueue achieved, the same for one task and for each task of a bulk
/// enqueue. A failure is an [`Error`], with [`Error::task_may_exist`] telling whether the task
/// may exist anyway.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Enqueued {
    /// Cloud Tasks created this task.
    Created {
        /// The task's full name.
        task_name: String,
        /// The task as Cloud Tasks returned it: always for a single enqueue; for a bulk
        /// enqueue only with [`BatchOptions::with_created_tasks`], so that a million outcomes
        /// do not hold a million task bodies.
        task: Option<Box<Task>>,
    },
    /// A task with this name exists, or ran or was deleted recently (its name stays taken for
    /// about 1 hour, up to 24 hours; about 9 days for queue.yaml queues): enqueued by an
    /// earlier call, or by an earlier attempt of this call whose answer was lost.
    AlreadyExists {
        /// The task's full name.
        task_name: String,
    },
}

impl Enqueued {
    /// Created, with the task as returned.
    pub(crate) fn created(task: Task) -> Self {
        Self::Created {
            task_name: task.name.clone(),
            task: Some(Box::new(task)),
        }
    }

    /// The task's full name.
    pub fn task_name(&self) -> &str {
        match self {
            Self::Created { task_name, .. } | Self::AlreadyExists { task_name } => task_name,
        }
    }

    /// Whether this call created the task.
    pub fn was_created(&self) -> bool {
        matches!(self, Self::Created { .. })
    }

    /// The task as Cloud Tasks created it, if this call created it and kept it (see
    /// [`Enqueued::Created`]).
    pub fn task(&self) -> Option<&Task> {
        match self {
            Self::Created { task, .. } => task.as_deref(),
            Self::AlreadyExists { .. } => None,
        }
    }
}

/// Builds a [`CloudTasksClient`]; every target value is checked by [`ClientBuilder::build`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    project_id: String,
    location: String,
    queue: String,
    service_url: String,
    service_account_email: String,
    transport: Transport,
    /// `with_credentials` or `with_endpoint` combined with `with_emulator_host`: `build()` refuses
    /// it rather than let the later call silently pick Google or the emulator.
    emulator_conflict: Option<&'static str>,
    attempt_timeout: Duration,
    total_timeout: Duration,
    retry_policy: RetryPolicy,
    connection: ConnectionOptions,
    ca_certificate_pem: Option<Vec<u8>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        let defaults = Settings::default();
        Self {
            project_id: defaults.gcp_project_id,
            location: defaults.gcp_location,
            queue: defaults.cloud_tasks_queue,
            service_url: defaults.cloud_run_service_url,
            service_account_email: defaults.cloud_run_service_account,
            transport: Transport::Google {
                endpoint: DEFAULT_ENDPOINT.to_owned(),
                credentials: None,
            },
            emulator_conflict: None,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
            retry_policy: RetryPolicy::default(),
            connection: ConnectionOptions {
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
                keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
                tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
                resolved_addresses: None,
            },
            ca_certificate_pem: None,
        }
    }
}

impl ClientBuilder {
    /// The Google Cloud project that owns the queue (`GCP_PROJECT_ID`).
    pub fn with_project_id(mut self, project_id: impl Into<String>) -> Self {
        self.project_id = project_id.into();
        self
    }

    /// The queue's region (`GCP_LOCATION`, default `us-central1`).
    pub fn with_location(mut self, location: impl Into<String>) -> Self {
        self.location = location.into();
        self
    }

    /// The queue's short ID (`CLOUD_TASKS_QUEUE`, default `document-processing`).
    pub fn with_queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// The backend's base URL (`CLOUD_RUN_SERVICE_URL`); also the OIDC audience.
    pub fn with_service_url(mut self, service_url: impl Into<String>) -> Self {
        self.service_url = service_url.into();
        self
    }

    /// The service account Cloud Tasks mints OIDC tokens for (`CLOUD_RUN_SERVICE_ACCOUNT`).
    pub fn with_service_account_email(mut self, email: impl Into<String>) -> Self {
        self.service_account_email = email.into();
        self
    }

    /// An `https://` endpoint other than Google's global one: a regional or Private Service
    /// Connect endpoint. Plaintext is only possible through [`ClientBuilder::with_emulator_host`].
    ///
    /// Combined with [`ClientBuilder::with_emulator_host`], in either order, `build()` fails.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        match &mut self.transport {
            Transport::Google { endpoint: e, .. } => *e = endpoint.into(),
            Transport::Emulator { .. } => self.emulator_conflict = Some("with_endpoint"),
        }
        self
    }

    /// Credentials to use instead of Application Default Credentials.
    ///
    /// Combined with [`ClientBuilder::with_emulator_host`], in either order, `build()` fails.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        match &mut self.transport {
            Transport::Google { credentials: c, .. } => *c = Some(credentials),
            Transport::Emulator { .. } => self.emulator_conflict = Some("with_credentials"),
        }
        self
    }

    /// Talks plaintext to an emulator at `host:port` and sends no credentials.
    pub fn with_emulator_host(mut self, host: impl Into<String>) -> Self {
        if let Transport::Google {
            endpoint,
            credentials,
        } = &self.transport
        {
            if credentials.is_some() {
                self.emulator_conflict = Some("with_credentials");
            } else if endpoint != DEFAULT_ENDPOINT {
                self.emulator_conflict = Some("with_endpoint");
            }
        }
        self.transport = Transport::Emulator { host: host.into() };
        self
    }

    /// Also trusts this CA (PEM) for the endpoint's TLS certificate: for a private endpoint
    /// behind a proxy with its own CA, or a local TLS test server.
    pub fn with_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Deadline of one `CreateTask` attempt (default 20 s).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Deadline of a whole call, retries included (default 30 s).
    pub fn with_total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }

    /// When failed calls are sent again (see [`RetryPolicy`]).
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = policy;
        self
    }

    /// Deadline for establishing a connection (default 5 s). Connecting runs in the
    /// background, shared by every call that waits for it; the calls fail when it does.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connection.connect_timeout = timeout;
        self
    }

    /// Connections opened at most (default 8, at least 1). A connection carries as many
    /// concurrent calls as the server admits (100 at most, Google's limit); the client opens
    /// another when all are full, and closes an extra one after 90 s without calls (never the
    /// only healthy one).
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.connection.max_connections = connections.max(1);
        self
    }

    /// How long a connection without calls may go without a frame before it is checked with
    /// an HTTP/2 PING (default 2 hours, the least gRPC servers accept by default without
    /// calls); `None` sends none. A server answers PINGs more frequent than it permits with
    /// GOAWAY "too_many_pings", so lower it only for a server that permits it (C-core:
    /// `grpc.keepalive_permit_without_calls` and `grpc.http2.min_ping_interval_without_data_ms`;
    /// Go: `EnforcementPolicy`).
    pub fn with_keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.connection.keepalive_interval = interval;
        self
    }

    /// How long a connection with calls outstanding may receive nothing before it is closed
    /// (default 20 s). After half of it a PING goes out, and the connection takes no new call
    /// until the answer; the calls on a connection closed this way fail ("may exist": their
    /// requests were written). At most one such PING until the server answers a call again,
    /// or every 5 minutes, as gRPC servers permit. Also how long an idle PING may go
    /// unanswered, and the TCP_USER_TIMEOUT of the connection's socket on Linux.
    pub fn with_keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.connection.keepalive_timeout = timeout;
        self
    }

    /// TCP keepalive idle time and probe interval (default 15 s); `None` leaves the system's.
    pub fn with_tcp_keepalive(mut self, keepalive: Option<Duration>) -> Self {
        self.connection.tcp_keepalive = keepalive;
        self
    }

    /// Connects to these addresses, in this order, instead of resolving the endpoint's host;
    /// the port stays the endpoint's, and TLS still verifies the endpoint's host name. For a
    /// Private Service Connect endpoint reached by IP, or a test. Like a resolved name, every
    /// address is tried: the other address family after 300 ms (Happy Eyeballs), addresses of
    /// one family in turn, each with its share of the connect timeout.
    pub fn with_resolved_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.connection.resolved_addresses = Some(addresses.into_iter().collect());
        self
    }

    /// Checks the values and creates the client. Connecting happens on the first call.
    ///
    /// Call it inside a Tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] listing every bad value, [`Error::Transport`] for an unusable endpoint,
    /// [`Error::Auth`] if Application Default Credentials cannot be loaded.
    pub fn build(self) -> Result<CloudTasksClient, Error> {
        if let Some(call) = self.emulator_conflict {
            return Err(Error::Config(crate::ConfigError::new(vec![
                crate::error::ConfigProblem {
                    setting: "CLOUD_TASKS_EMULATOR_HOST",
                    message: format!(
                        "both with_emulator_host and {call} were called; an emulator takes no \
                         credentials or endpoint, so drop {call} to use the emulator, or \
                         with_emulator_host (and CLOUD_TASKS_EMULATOR_HOST) to reach Google"
                    ),
                },
            ])));
        }
        let emulator_host = match &self.transport {
            Transport::Emulator { host } => Some(host.as_str()),
            Transport::Google { .. } => None,
        };
        let target = Target::checked(
            &self.project_id,
            &self.location,
            &self.queue,
            &self.service_url,
            &self.service_account_email,
            emulator_host,
        )?;
        let (endpoint, auth) = match self.transport {
            Transport::Emulator { host } => (format!("http://{host}"), Auth::None),
            Transport::Google {
                endpoint,
                credentials,
            } => {
                let auth = match credentials {
                    Some(credentials) => Auth::Google(credentials),
                    None => Auth::application_default()?,
                };
                (endpoint, auth)
            }
        };
        let security = match auth {
            Auth::Google(_) => Security::Tls {
                extra_ca: self.ca_certificate_pem.as_deref(),
            },
            Auth::None => Security::Plaintext,
        };
        let channel = connect_lazily(&endpoint, security, self.connection)?;
        Ok(CloudTasksClient {
            inner: Arc::new(Inner {
                call_headers: auth::queue_call_headers(target.queue_path()),
                attempt_timeout_header: grpc_timeout_header(self.attempt_timeout),
                server: Server::new(&endpoint, target.queue_path()),
                target,
                endpoint,
                stub: RawCloudTasksClient::new(channel.clone()),
                channel,
                auth,
                attempt_timeout: self.attempt_timeout,
                total_timeout: self.total_timeout,
                retry_policy: self.retry_policy,
                batch_create_unimplemented: AtomicBool::new(false),
            }),
        })
    }
}

/// The `grpc-timeout` header tonic's `Request::set_timeout` sends for `timeout` (always
/// `Some`; tonic's API gives it back through a map).
fn grpc_timeout_header(timeout: Duration) -> Option<HeaderValue> {
    let mut request = tonic::Request::new(());
    request.set_timeout(timeout);
    request.into_parts().0.into_headers().remove(GRPC_TIMEOUT)
}

/// A channel that connects on first use; with TLS, the endpoint must be `https`.
fn connect_lazily(
    endpoint: &str,
    security: Security<'_>,
    options: ConnectionOptions,
) -> Result<Http2Channel, Error> {
    Http2Channel::lazy(endpoint, security, options, USER_AGENT).map_err(|source| match source {
        SetupError::NotHttps => {
            Error::Config(crate::ConfigError::new(vec![crate::error::ConfigProblem {
                setting: "endpoint",
                message: format!(
                    "endpoint {endpoint:?} must use https://; plaintext is only for emulators \
                     (set CLOUD_TASKS_EMULATOR_HOST=host:port)"
                ),
            }]))
        }
        source => Error::Transport {
            endpoint: endpoint.to_owned(),
            source: Arc::new(source),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_with_attempt_timeout(timeout: Duration) -> CloudTasksClient {
        CloudTasksClient::builder()
            .with_project_id("p")
            .with_service_url("https://backend-abc123-uc.a.run.app")
            .with_service_account_email("a@p.iam.gserviceaccount.com")
            .with_emulator_host("127.0.0.1:1")
            .with_attempt_timeout(timeout)
            .build()
            .unwrap()
    }

    /// The cached `grpc-timeout` and the one formatted per call are both what tonic sends.
    #[tokio::test]
    async fn grpc_timeout_is_what_tonic_sends() {
        for attempt_timeout in [Duration::from_secs(20), Duration::from_millis(1500)] {
            let client = client_with_attempt_timeout(attempt_timeout);
            for timeout in [
                attempt_timeout,
                Duration::from_millis(2345),
                Duration::from_secs(3600),
            ] {
                let metadata = client.call_metadata(timeout).await.unwrap();
                let mut expected = tonic::Request::new(());
                expected.set_timeout(timeout);
                assert_eq!(
                    metadata.get("grpc-timeout"),
                    expected.metadata().get("grpc-timeout"),
                    "{timeout:?}"
                );
                assert!(metadata.get("x-goog-request-params").is_some());
                assert!(metadata.get("x-goog-api-client").is_some());
            }
        }
    }
}
