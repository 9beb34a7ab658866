//! An in-process mock Cloud Tasks server for tests (feature `testing`).
//!
//! It binds `127.0.0.1:0`, records every request with its metadata, stores created tasks the
//! way Cloud Tasks does (named tasks are de-duplicated), and answers with programmable faults.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cloud_tasks::CloudTasksClient;
//! use cloud_tasks::testing::MockCloudTasks;
//!
//! let server = MockCloudTasks::start().await?;
//! let client = CloudTasksClient::builder()
//!     .with_project_id("my-project")
//!     .with_service_url("http://127.0.0.1:8080")
//!     .with_service_account_email("invoker@my-project.iam.gserviceaccount.com")
//!     .with_emulator_host(server.host())
//!     .build()?;
//! let enqueued = client
//!     .create_document_processing_task(uuid::Uuid::new_v4(), "report.pdf")
//!     .await?;
//! assert_eq!(server.tasks()[0].name, enqueued.task_name());
//! assert_eq!(server.create_task_calls().len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::error::Code;
use crate::permissions::{ACT_AS, FULL_VIEW, Rpc};

use crate::proto::google::cloud::tasks::v2 as pb;
use crate::proto::google::longrunning::operations_server::{Operations, OperationsServer};
use crate::proto::google::longrunning::{GetOperationRequest, operation};
use crate::proto::{
    BatchCreateTasksMetadata, BatchCreateTasksRequest, BatchCreateTasksResponse, CloudTasks,
    CloudTasksServer, CreateTaskRequest, Operation, Task,
};

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded<T> {
    /// The request's gRPC metadata (its HTTP/2 headers, minus the pseudo-headers), including
    /// `authorization` if one was sent.
    pub metadata: HeaderMap,
    /// The request message.
    pub message: T,
}

/// What the server does with the next call, instead of answering normally.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with this status without storing anything.
    Reject(Code, String),
    /// Store the task (or delete or run it) as usual, then fail with this status: the reply
    /// is lost.
    FailAfterStore(Code, String),
    /// Wait this long, then answer normally.
    Delay(Duration),
}

#[derive(Debug, Default)]
struct State {
    create_task_calls: Vec<Recorded<CreateTaskRequest>>,
    tasks: Vec<Task>,
    /// Names that Cloud Tasks would still refuse as duplicates.
    used_names: HashSet<String>,
    faults: VecDeque<Fault>,
    connections: usize,
    /// Queues that exist; `None` means every queue does.
    queues: Option<HashSet<String>>,
    next_task_id: u64,
    batch_create_tasks_calls: Vec<Recorded<BatchCreateTasksRequest>>,
    get_operation_calls: Vec<Recorded<GetOperationRequest>>,
    /// Batch operations by name.
    operations: HashMap<String, BatchOperation>,
    /// Operation name of each `request_id` seen.
    request_ids: HashMap<String, String>,
    /// `GetOperation` calls a new batch operation needs before it is done.
    operation_polls: u32,
    /// Tasks whose HTTP body contains the text fail with the status.
    failing_bodies: Vec<(Vec<u8>, Code, String)>,
    /// Forget calls and tasks once answered (benchmarks); names are still de-duplicated.
    forget_history: bool,
    next_operation_id: u64,
    get_task_calls: Vec<Recorded<pb::GetTaskRequest>>,
    delete_task_calls: Vec<Recorded<pb::DeleteTaskRequest>>,
    run_task_calls: Vec<Recorded<pb::RunTaskRequest>>,
    list_tasks_calls: Vec<Recorded<pb::ListTasksRequest>>,
    /// Task creation quota: calls past it are refused with RESOURCE_EXHAUSTED.
    quota: Option<Quota>,
    /// Calls refused by `quota`.
    resource_exhausted: usize,
    /// Batch responses list the created tasks in a random order.
    shuffle_created: bool,
    /// Operations are forgotten once answered, as if they had expired.
    expire_operations: bool,
    /// RPCs answered UNIMPLEMENTED, by name.
    unimplemented: HashSet<&'static str>,
    /// The caller's permissions by resource; `None` allows every call.
    grants: Option<Vec<(String, HashSet<String>)>>,
}

/// A token bucket of tasks, as Cloud Tasks' quota refuses calls past a rate: a call of `n`
/// tasks takes `n` tokens or is refused whole.
#[derive(Debug)]
struct Quota {
    tasks_per_second: f64,
    capacity: f64,
    tokens: f64,
    refilled: std::time::Instant,
}

impl Quota {
    fn admit(&mut self, tasks: usize) -> bool {
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.tasks_per_second).min(self.capacity);
        let tasks = tasks as f64;
        if self.tokens >= tasks {
            self.tokens -= tasks;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct BatchOperation {
    polls_left: u32,
    /// The operation as it is once done.
    done: Operation,
}

/// Handle to a running mock server; dropping it stops the server.
#[derive(Debug)]
pub struct MockCloudTasks {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tls: Option<Identity>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl MockCloudTasks {
    /// Starts a plaintext server on `127.0.0.1:0`.
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts a TLS server on `127.0.0.1:0` with this certificate chain and key (PEM).
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<Self> {
        Self::start_with(Some(Identity::from_pem(cert_pem, key_pem))).await
    }

    async fn start_with(tls: Option<Identity>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let mut server = Self {
            addr: listener.local_addr()?,
            state: Arc::default(),
            tls,
            running: None,
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel::<()>();
        let service = CloudTasksServer::new(Service {
            state: self.state.clone(),
        });
        let mut builder = Server::builder();
        if let Some(identity) = &self.tls {
            builder = builder
                .tls_config(ServerTlsConfig::new().identity(identity.clone()))
                .expect("a PEM identity makes a valid TLS config");
        }
        let operations = OperationsServer::new(OperationsService {
            state: self.state.clone(),
        });
        let router = builder.add_service(service).add_service(operations);
        let state = self.state.clone();
        let handle = tokio::spawn(async move {
            let incoming =
                TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map(move |accepted| {
                        if accepted.is_ok() {
                            lock(&state).connections += 1;
                        }
                        accepted
                    });
            // The server's own errors end the test's connection, which the test then sees.
            if let Err(error) = router
                .serve_with_incoming_shutdown(incoming, async {
                    stopped.await.ok();
                })
                .await
            {
                tracing::error!(%error, "mock Cloud Tasks server failed");
            }
        });
        self.running = Some((stop, handle));
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:port`, as `CLOUD_TASKS_EMULATOR_HOST` wants it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `https://127.0.0.1:port` (for a TLS server) or `http://127.0.0.1:port`.
    pub fn uri(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Only these queues exist (full paths); `CreateTask` on any other is NOT_FOUND.
    pub fn set_queues<I: IntoIterator<Item = S>, S: Into<String>>(&self, queues: I) {
        self.lock().queues = Some(queues.into_iter().map(Into::into).collect());
    }

    /// Answers these RPCs (by name: `"BatchCreateTasks"`, `"GetTask"`...) with UNIMPLEMENTED
    /// from now on, as a server without them does (an emulator); they are still recorded.
    ///
    /// # Panics
    /// On a name that is not one of the RPCs the client makes.
    pub fn set_unimplemented<'a>(&self, methods: impl IntoIterator<Item = &'a str>) {
        let unimplemented = methods
            .into_iter()
            .map(|method| {
                MOCKED_METHODS
                    .into_iter()
                    .find(|known| *known == method)
                    .unwrap_or_else(|| {
                        panic!("{method:?} is none of the mock's RPCs: {MOCKED_METHODS:?}")
                    })
            })
            .collect();
        self.lock().unimplemented = unimplemented;
    }

    /// Queues a fault for the next call that has none yet; faults apply in order.
    pub fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Every `CreateTask` request received, in order, including rejected ones.
    pub fn create_task_calls(&self) -> Vec<Recorded<CreateTaskRequest>> {
        self.lock().create_task_calls.clone()
    }

    /// How many TCP connections the server has accepted.
    pub fn connections(&self) -> usize {
        self.lock().connections
    }

    /// Every `BatchCreateTasks` request received, in order, including rejected ones.
    pub fn batch_create_tasks_calls(&self) -> Vec<Recorded<BatchCreateTasksRequest>> {
        self.lock().batch_create_tasks_calls.clone()
    }

    /// Every `google.longrunning.Operations/GetOperation` request received, in order.
    pub fn get_operation_calls(&self) -> Vec<Recorded<GetOperationRequest>> {
        self.lock().get_operation_calls.clone()
    }

    /// Batches received from now on answer with an operation that is not done; it is done (and
    /// says so) on its `polls`-th `GetOperation`. The tasks are stored when the batch arrives.
    /// 0 (the default) answers every batch with a done operation.
    pub fn set_operation_polls(&self, polls: u32) {
        self.lock().operation_polls = polls;
    }

    /// Tasks whose HTTP body contains `text` (e.g. a document ID) are refused with `code`, in
    /// `CreateTask` and as a per-task failure of `BatchCreateTasks`.
    pub fn fail_tasks_containing(&self, text: &str, code: Code, message: &str) {
        self.lock()
            .failing_bodies
            .push((text.as_bytes().to_vec(), code, message.to_owned()));
    }

    /// Stops recording calls and keeping created tasks (names are still de-duplicated), so a
    /// long benchmark's memory stays flat. [`Self::tasks`] and the `*_calls` methods then
    /// return only what came before.
    pub fn forget_history(&self) {
        self.lock().forget_history = true;
    }

    /// Creates at most `tasks_per_second` tasks a second, as a quota would: a `CreateTask` or
    /// `BatchCreateTasks` call whose tasks do not fit is refused whole with RESOURCE_EXHAUSTED
    /// and stores nothing. Up to a quarter second's worth (at least 100 tasks, one full batch)
    /// may come at once.
    pub fn set_rate_limit(&self, tasks_per_second: u32) {
        let tasks_per_second = f64::from(tasks_per_second.max(1));
        let capacity = (tasks_per_second / 4.0).max(100.0);
        self.lock().quota = Some(Quota {
            tasks_per_second,
            capacity,
            tokens: capacity,
            refilled: std::time::Instant::now(),
        });
    }

    /// How many calls the rate limit of [`Self::set_rate_limit`] refused.
    pub fn resource_exhausted_answers(&self) -> usize {
        self.lock().resource_exhausted
    }

    /// Batch operations list their created tasks in a random order, which the API does not
    /// rule out: a client must not pair them with its requests by position.
    pub fn shuffle_created_tasks(&self) {
        self.lock().shuffle_created = true;
    }

    /// Batch operations are forgotten as soon as they are answered, as expired ones are:
    /// `GetOperation` answers NOT_FOUND (with [`Self::set_operation_polls`], a batch's tasks
    /// are stored but its outcome cannot be read).
    pub fn expire_operations(&self) {
        self.lock().expire_operations = true;
    }

    /// From now on the caller holds only the permissions granted here (grants add up): a call
    /// that needs a permission not granted on its resource, or on a resource above it, is
    /// refused with PERMISSION_DENIED worded as Cloud Tasks words it. Until the first grant
    /// every call is allowed.
    ///
    /// `resource` is a full name: `projects/p` (covers everything in the project, operations
    /// included), a queue path (covers its tasks), a task name; a service account is named by
    /// its email. What each call needs is the crate's own table: CreateTask and
    /// BatchCreateTasks `cloudtasks.tasks.create` on the queue, `cloudtasks.tasks.fullView` on
    /// the queue for the FULL view, and `iam.serviceAccounts.actAs` on each OIDC token's
    /// account; GetOperation `cloudtasks.operations.get` on the operation
    /// (`projects/p/locations/l/operations/...`, which no queue grant covers); GetTask,
    /// DeleteTask, RunTask `cloudtasks.tasks.get` / `.delete` / `.run` on the task; ListTasks
    /// `cloudtasks.tasks.list` on the queue.
    pub fn grant<I: IntoIterator<Item = S>, S: Into<String>>(
        &self,
        resource: &str,
        permissions: I,
    ) {
        self.lock().grants.get_or_insert_with(Vec::new).push((
            resource.to_owned(),
            permissions.into_iter().map(Into::into).collect(),
        ));
    }

    /// Every `GetTask` request received, in order, including rejected ones.
    pub fn get_task_calls(&self) -> Vec<Recorded<pb::GetTaskRequest>> {
        self.lock().get_task_calls.clone()
    }

    /// Every `DeleteTask` request received, in order, including rejected ones.
    pub fn delete_task_calls(&self) -> Vec<Recorded<pb::DeleteTaskRequest>> {
        self.lock().delete_task_calls.clone()
    }

    /// Every `RunTask` request received, in order, including rejected ones.
    pub fn run_task_calls(&self) -> Vec<Recorded<pb::RunTaskRequest>> {
        self.lock().run_task_calls.clone()
    }

    /// Every `ListTasks` request received, in order, including rejected ones.
    pub fn list_tasks_calls(&self) -> Vec<Recorded<pb::ListTasksRequest>> {
        self.lock().list_tasks_calls.clone()
    }

    /// Every task stored (created and not yet deleted), in creation order.
    pub fn tasks(&self) -> Vec<Task> {
        self.lock().tasks.clone()
    }

    /// Stops serving; connections in flight are closed. State is kept for [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.send(()).ok();
            handle.await.ok();
        }
    }

    /// Stops, then serves again on the same address with the same state.
    ///
    /// # Errors
    /// If the address cannot be bound again.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for MockCloudTasks {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.send(()).ok();
            handle.abort();
        }
    }
}

/// The server's answer with the crate's code.
fn status(code: Code, message: impl Into<String>) -> Status {
    Status::new(tonic::Code::from_i32(code.into()), message)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test that panicked while holding the lock already failed; keep serving the others.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl State {
    /// UNIMPLEMENTED if the test took `method` away, as gRPC servers answer a method they
    /// lack (before looking at the caller's permissions).
    fn implemented(&self, method: &str) -> Result<(), Status> {
        if self.unimplemented.contains(method) {
            return Err(Status::unimplemented(format!("Method not found: {method}")));
        }
        Ok(())
    }

    /// The stored task named `name`, or NOT_FOUND as Cloud Tasks answers for a task that was
    /// never created, already ran or was deleted.
    fn task_mut(&mut self, name: &str) -> Result<&mut Task, Status> {
        self.tasks
            .iter_mut()
            .find(|task| task.name == name)
            .ok_or_else(|| Status::not_found("Requested entity was not found."))
    }

    /// PERMISSION_DENIED, as Cloud Tasks words it, unless `permission` is granted on `resource`
    /// or on a resource whose name it is under.
    fn require(&self, permission: &str, resource: &str) -> Result<(), Status> {
        let Some(grants) = &self.grants else {
            return Ok(());
        };
        let covers = |granted_on: &str| {
            resource
                .strip_prefix(granted_on)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if grants
            .iter()
            .any(|(on, held)| held.contains(permission) && covers(on))
        {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "The principal (user or service account) lacks IAM permission \"{permission}\" for \
             the resource \"{resource}\" (or the resource may not exist)."
        )))
    }

    /// What creating these tasks in `parent` needs: the call's permission and, for the FULL
    /// view, `fullView` on the queue; `actAs` on each OIDC token's service account.
    fn require_create<'a>(
        &self,
        rpc: Rpc,
        parent: &str,
        requests: impl IntoIterator<Item = &'a CreateTaskRequest>,
    ) -> Result<(), Status> {
        self.require(rpc.requirement().permission, parent)?;
        for request in requests {
            if request.response_view == i32::from(pb::task::View::Full) {
                self.require(FULL_VIEW.permission, parent)?;
            }
            if let Some(pb::task::MessageType::HttpRequest(http)) = request
                .task
                .as_ref()
                .and_then(|task| task.message_type.as_ref())
                && let Some(pb::http_request::AuthorizationHeader::OidcToken(token)) =
                    &http.authorization_header
            {
                self.require(ACT_AS.permission, &token.service_account_email)?;
            }
        }
        Ok(())
    }

    /// What a call on one task (or the queue's list) needs, the FULL view included.
    fn require_read(&self, rpc: Rpc, resource: &str, view: i32) -> Result<(), Status> {
        self.require(rpc.requirement().permission, resource)?;
        if view == i32::from(pb::task::View::Full) {
            self.require(FULL_VIEW.permission, resource)?;
        }
        Ok(())
    }

    /// NOT_FOUND, as Cloud Tasks answers, unless `queue` exists.
    fn check_queue(&self, queue: &str) -> Result<(), Status> {
        match &self.queues {
            Some(queues) if !queues.contains(queue) => Err(Status::not_found(format!(
                "Queue does not exist. If you just created the queue, wait at least a minute for \
                 the queue to initialize. ({queue})"
            ))),
            _ => Ok(()),
        }
    }
}

struct Service {
    state: Arc<Mutex<State>>,
}

impl Service {
    /// RESOURCE_EXHAUSTED, storing nothing, if a call of `tasks` tasks exceeds the quota.
    fn check_quota(&self, tasks: usize) -> Result<(), Status> {
        let mut state = lock(&self.state);
        let admitted = state.quota.as_mut().is_none_or(|quota| quota.admit(tasks));
        if admitted {
            return Ok(());
        }
        state.resource_exhausted += 1;
        Err(Status::resource_exhausted(
            "Quota exceeded for quota metric 'Task creation requests' and limit 'Task creation \
             requests per minute' of service 'cloudtasks.googleapis.com'",
        ))
    }

    /// Takes the next fault, waiting out any delays first.
    async fn next_fault(&self) -> Option<Fault> {
        loop {
            let fault = lock(&self.state).faults.pop_front();
            match fault {
                Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
                other => return other,
            }
        }
    }

    fn store(&self, request: &CreateTaskRequest) -> Result<Task, Status> {
        let mut state = lock(&self.state);
        state.check_queue(&request.parent)?;
        let mut task = request
            .task
            .clone()
            .ok_or_else(|| Status::invalid_argument("Task is required"))?;
        if let Some(pb::task::MessageType::HttpRequest(http)) = &task.message_type
            && let Some((_, code, message)) = state
                .failing_bodies
                .iter()
                .find(|(text, _, _)| contains(&http.body, text))
        {
            return Err(status(*code, message.clone()));
        }
        if task.name.is_empty() {
            state.next_task_id += 1;
            task.name = format!("{}/tasks/{:020}", request.parent, state.next_task_id);
        } else if !task
            .name
            .strip_prefix(&request.parent)
            .is_some_and(|rest| rest.starts_with("/tasks/"))
        {
            return Err(Status::invalid_argument(format!(
                "Task name {} is not in queue {}",
                task.name, request.parent
            )));
        } else if !state.used_names.insert(task.name.clone()) {
            return Err(Status::already_exists("Requested entity already exists"));
        }
        let now = prost_types::Timestamp::from(SystemTime::now());
        task.create_time = Some(now);
        task.schedule_time.get_or_insert(now);
        task.view = pb::task::View::Basic.into();
        if !state.forget_history {
            state.tasks.push(task.clone());
        }
        Ok(task)
    }

    /// Applies a batch as Cloud Tasks does: each request on its own, failures by index.
    fn apply_batch(&self, batch: &BatchCreateTasksRequest) -> Result<Operation, Status> {
        if batch.requests.is_empty() || batch.requests.len() > 100 {
            return Err(Status::invalid_argument(format!(
                "A batch must have 1 to 100 requests; got {}",
                batch.requests.len()
            )));
        }
        {
            let state = lock(&self.state);
            state.check_queue(&batch.parent)?;
            // A retried batch is not applied again: the same operation answers.
            if let Some(name) = state.request_ids.get(&batch.request_id) {
                let name = name.clone();
                return Ok(state.operations[&name].current());
            }
        }
        let mut created = Vec::new();
        let mut failed = HashMap::new();
        for (index, request) in batch.requests.iter().enumerate() {
            let result = if request.parent == batch.parent {
                self.store(request)
            } else {
                Err(Status::invalid_argument(format!(
                    "Request parent {} differs from the batch's {}",
                    request.parent, batch.parent
                )))
            };
            match result {
                Ok(task) => created.push(as_viewed(task, request.response_view)),
                Err(status) => {
                    let index = i32::try_from(index).expect("at most 100 requests");
                    failed.insert(
                        index,
                        crate::proto::google::rpc::Status {
                            code: status.code().into(),
                            message: status.message().to_owned(),
                            details: Vec::new(),
                        },
                    );
                }
            }
        }
        let now = prost_types::Timestamp::from(SystemTime::now());
        let state_after = if failed.is_empty() {
            pb::batch_create_tasks_metadata::State::Succeeded
        } else {
            pb::batch_create_tasks_metadata::State::PartiallySucceeded
        };
        let metadata = BatchCreateTasksMetadata {
            start_time: Some(now),
            end_time: Some(now),
            state: state_after.into(),
            failed_requests: failed,
        };
        let mut state = lock(&self.state);
        if state.shuffle_created {
            fastrand::shuffle(&mut created);
        }
        state.next_operation_id += 1;
        let location = batch
            .parent
            .split_once("/queues/")
            .map_or(batch.parent.as_str(), |(location, _)| location);
        let name = format!("{location}/operations/{:020}", state.next_operation_id);
        let done = Operation {
            name: name.clone(),
            metadata: Some(any(
                "google.cloud.tasks.v2.BatchCreateTasksMetadata",
                &metadata,
            )),
            done: true,
            result: Some(operation::Result::Response(any(
                "google.cloud.tasks.v2.BatchCreateTasksResponse",
                &BatchCreateTasksResponse { tasks: created },
            ))),
        };
        let entry = BatchOperation {
            polls_left: state.operation_polls,
            done,
        };
        let current = entry.current();
        if !batch.request_id.is_empty() {
            state
                .request_ids
                .insert(batch.request_id.clone(), name.clone());
        }
        if !state.expire_operations {
            state.operations.insert(name, entry);
        }
        Ok(current)
    }
}

impl BatchOperation {
    /// The operation as a `GetOperation` now would see it, without counting as a poll.
    fn current(&self) -> Operation {
        if self.polls_left == 0 {
            return self.done.clone();
        }
        let running = BatchCreateTasksMetadata {
            start_time: self
                .done
                .metadata
                .as_ref()
                .and_then(|any| BatchCreateTasksMetadata::decode(any.value.as_slice()).ok())
                .and_then(|metadata| metadata.start_time),
            state: pb::batch_create_tasks_metadata::State::Running.into(),
            ..BatchCreateTasksMetadata::default()
        };
        Operation {
            name: self.done.name.clone(),
            metadata: Some(any(
                "google.cloud.tasks.v2.BatchCreateTasksMetadata",
                &running,
            )),
            done: false,
            result: None,
        }
    }
}

fn any(type_name: &str, message: &impl prost::Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// Cloud Tasks leaves the body out of the returned task unless the FULL view is asked for.
fn as_viewed(mut task: Task, view: i32) -> Task {
    if view == i32::from(pb::task::View::Full) {
        task.view = view;
    } else if let Some(pb::task::MessageType::HttpRequest(http)) = &mut task.message_type {
        http.body.clear();
    }
    task
}

#[tonic::async_trait]
impl CloudTasks for Service {
    async fn create_task(
        &self,
        request: Request<CreateTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let (metadata, _, message) = request.into_parts();
        {
            let mut state = lock(&self.state);
            if !state.forget_history {
                state.create_task_calls.push(Recorded {
                    metadata: metadata.into_headers(),
                    message: message.clone(),
                });
            }
            state.implemented("CreateTask")?;
            state.require_create(Rpc::CreateTask, &message.parent, [&message])?;
        }
        self.check_quota(1)?;
        match self.next_fault().await {
            Some(Fault::Reject(code, text)) => Err(status(code, text)),
            Some(Fault::FailAfterStore(code, text)) => {
                self.store(&message)?;
                Err(status(code, text))
            }
            Some(Fault::Delay(_)) | None => {
                let task = self.store(&message)?;
                Ok(Response::new(as_viewed(task, message.response_view)))
            }
        }
    }

    async fn batch_create_tasks(
        &self,
        request: Request<BatchCreateTasksRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (metadata, _, message) = request.into_parts();
        {
            let mut state = lock(&self.state);
            if !state.forget_history {
                state.batch_create_tasks_calls.push(Recorded {
                    metadata: metadata.into_headers(),
                    message: message.clone(),
                });
            }
            state.implemented("BatchCreateTasks")?;
            state.require_create(Rpc::BatchCreateTasks, &message.parent, &message.requests)?;
        }
        self.check_quota(message.requests.len())?;
        match self.next_fault().await {
            Some(Fault::Reject(code, text)) => Err(status(code, text)),
            Some(Fault::FailAfterStore(code, text)) => {
                self.apply_batch(&message)?;
                Err(status(code, text))
            }
            Some(Fault::Delay(_)) | None => Ok(Response::new(self.apply_batch(&message)?)),
        }
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let (metadata, _, message) = request.into_parts();
        record(
            &self.state,
            |state| &mut state.get_task_calls,
            metadata,
            &message,
        );
        lock(&self.state).implemented("GetTask")?;
        lock(&self.state).require_read(Rpc::GetTask, &message.name, message.response_view)?;
        let fault = self.next_fault().await;
        rejected(fault.as_ref())?;
        let task = lock(&self.state).task_mut(&message.name)?.clone();
        answer(fault, as_viewed(task, message.response_view))
    }

    async fn delete_task(
        &self,
        request: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        let (metadata, _, message) = request.into_parts();
        record(
            &self.state,
            |state| &mut state.delete_task_calls,
            metadata,
            &message,
        );
        lock(&self.state).implemented("DeleteTask")?;
        lock(&self.state).require_read(Rpc::DeleteTask, &message.name, 0)?;
        let fault = self.next_fault().await;
        rejected(fault.as_ref())?;
        let mut state = lock(&self.state);
        state.task_mut(&message.name)?;
        // The name stays in `used_names`: Cloud Tasks refuses it for a while after deletion.
        state.tasks.retain(|task| task.name != message.name);
        answer(fault, ())
    }

    async fn run_task(
        &self,
        request: Request<pb::RunTaskRequest>,
    ) -> Result<Response<Task>, Status> {
        let (metadata, _, message) = request.into_parts();
        record(
            &self.state,
            |state| &mut state.run_task_calls,
            metadata,
            &message,
        );
        lock(&self.state).implemented("RunTask")?;
        lock(&self.state).require_read(Rpc::RunTask, &message.name, message.response_view)?;
        let fault = self.next_fault().await;
        rejected(fault.as_ref())?;
        // No dispatch happens here: the task counts one more attempt, dispatched now, and stays.
        let mut state = lock(&self.state);
        let task = state.task_mut(&message.name)?;
        let now = prost_types::Timestamp::from(SystemTime::now());
        let attempt = pb::Attempt {
            schedule_time: task.schedule_time,
            dispatch_time: Some(now),
            ..pb::Attempt::default()
        };
        task.dispatch_count += 1;
        task.first_attempt.get_or_insert_with(|| attempt.clone());
        task.last_attempt = Some(attempt);
        let task = task.clone();
        answer(fault, as_viewed(task, message.response_view))
    }

    /// Pages in creation order; the page token is the offset of the page's first task.
    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        record(
            &self.state,
            |state| &mut state.list_tasks_calls,
            metadata,
            &message,
        );
        lock(&self.state).implemented("ListTasks")?;
        lock(&self.state).require_read(Rpc::ListTasks, &message.parent, message.response_view)?;
        let fault = self.next_fault().await;
        rejected(fault.as_ref())?;
        let state = lock(&self.state);
        state.check_queue(&message.parent)?;
        let page_size = match message.page_size {
            0 => 1000,
            size if size < 0 => {
                return Err(Status::invalid_argument(
                    "ListTasksRequest.pageSize cannot be negative.",
                ));
            }
            size => usize::try_from(size.min(1000)).expect("positive"),
        };
        let start = match message.page_token.as_str() {
            "" => 0,
            token => token
                .parse::<usize>()
                .map_err(|_| Status::invalid_argument("Invalid page_token"))?,
        };
        let prefix = format!("{}/tasks/", message.parent);
        let in_queue: Vec<&Task> = state
            .tasks
            .iter()
            .filter(|task| task.name.starts_with(&prefix))
            .collect();
        let end = (start + page_size).min(in_queue.len());
        let tasks = in_queue
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|task| as_viewed((*task).clone(), message.response_view))
            .collect();
        let next_page_token = if end < in_queue.len() {
            end.to_string()
        } else {
            String::new()
        };
        drop(state);
        answer(
            fault,
            pb::ListTasksResponse {
                tasks,
                next_page_token,
            },
        )
    }
}

/// The RPCs the mock serves, by name.
const MOCKED_METHODS: [&str; 7] = [
    "CreateTask",
    "BatchCreateTasks",
    "GetOperation",
    "GetTask",
    "DeleteTask",
    "RunTask",
    "ListTasks",
];

/// Records a call unless the server forgets its history.
fn record<T: Clone>(
    state: &Mutex<State>,
    calls: impl FnOnce(&mut State) -> &mut Vec<Recorded<T>>,
    metadata: tonic::metadata::MetadataMap,
    message: &T,
) {
    let mut state = lock(state);
    if !state.forget_history {
        calls(&mut state).push(Recorded {
            metadata: metadata.into_headers(),
            message: message.clone(),
        });
    }
}

/// A `Reject` fault's status: the call fails before it looks at anything.
fn rejected(fault: Option<&Fault>) -> Result<(), Status> {
    match fault {
        Some(Fault::Reject(code, text)) => Err(status(*code, text.clone())),
        _ => Ok(()),
    }
}

/// The answer of a call once done: a lost reply (`FailAfterStore`: done, then failed) fails
/// it, a delay has already passed.
fn answer<T>(fault: Option<Fault>, message: T) -> Result<Response<T>, Status> {
    match fault {
        Some(Fault::Reject(code, text) | Fault::FailAfterStore(code, text)) => {
            Err(status(code, text))
        }
        Some(Fault::Delay(_)) | None => Ok(Response::new(message)),
    }
}

struct OperationsService {
    state: Arc<Mutex<State>>,
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let (metadata, _, message) = request.into_parts();
        let mut state = lock(&self.state);
        if !state.forget_history {
            state.get_operation_calls.push(Recorded {
                metadata: metadata.into_headers(),
                message: message.clone(),
            });
        }
        state.implemented("GetOperation")?;
        state.require(Rpc::GetOperation.requirement().permission, &message.name)?;
        let operation = state
            .operations
            .get_mut(&message.name)
            .ok_or_else(|| Status::not_found(format!("Operation {} not found", message.name)))?;
        operation.polls_left = operation.polls_left.saturating_sub(1);
        Ok(Response::new(operation.current()))
    }
}
