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
//! let task = client
//!     .create_document_processing_task(uuid::Uuid::new_v4(), "report.pdf")
//!     .await?;
//! assert_eq!(server.tasks()[0].name, task.name);
//! assert_eq!(server.create_task_calls().len(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

use crate::proto::google::cloud::tasks::v2 as pb;
use crate::proto::{CloudTasks, CloudTasksServer, CreateTaskRequest, Task};

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded<T> {
    /// The request's gRPC metadata (headers), including `authorization` if one was sent.
    pub metadata: MetadataMap,
    /// The request message.
    pub message: T,
}

/// What the server does with the next call, instead of answering normally.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with this status without storing anything.
    Reject(Code, String),
    /// Store the task as usual, then fail with this status: the reply is lost.
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
        let router = builder.add_service(service);
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

    /// Every task stored, in creation order.
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

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test that panicked while holding the lock already failed; keep serving the others.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Service {
    state: Arc<Mutex<State>>,
}

impl Service {
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
        if let Some(queues) = &state.queues
            && !queues.contains(&request.parent)
        {
            return Err(Status::not_found(format!(
                "Queue does not exist. If you just created the queue, wait at least a minute for \
                 the queue to initialize. ({})",
                request.parent
            )));
        }
        let mut task = request
            .task
            .clone()
            .ok_or_else(|| Status::invalid_argument("Task is required"))?;
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
        state.tasks.push(task.clone());
        Ok(task)
    }
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
        lock(&self.state).create_task_calls.push(Recorded {
            metadata,
            message: message.clone(),
        });
        match self.next_fault().await {
            Some(Fault::Reject(code, text)) => Err(Status::new(code, text)),
            Some(Fault::FailAfterStore(code, text)) => {
                self.store(&message)?;
                Err(Status::new(code, text))
            }
            Some(Fault::Delay(_)) | None => {
                let task = self.store(&message)?;
                Ok(Response::new(as_viewed(task, message.response_view)))
            }
        }
    }
}
