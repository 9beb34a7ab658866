//! Enqueue document-processing jobs on Google Cloud Tasks over gRPC.
//!
//! An upload endpoint calls [`CloudTasksClient::create_document_processing_task`] and gets the
//! created task back in milliseconds; Cloud Tasks later POSTs the job to the backend's
//! `/api/tasks/process-document` endpoint with an OIDC token for a service account.
//!
//! ```no_run
//! # async fn upload() -> Result<(), cloud_tasks::Error> {
//! use cloud_tasks::{CloudTasksClient, Settings};
//!
//! let settings = Settings::from_env()?;
//! if settings.is_cloud_tasks_configured() {
//!     let client = CloudTasksClient::from_settings(&settings)?;
//!     let task = client
//!         .create_document_processing_task(uuid::Uuid::new_v4(), "invoice.pdf")
//!         .await?;
//!     println!("enqueued {}", task.name);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! To enqueue many documents at once, [`CloudTasksClient::create_document_processing_tasks`] (or
//! a streaming [`BatchEnqueuer`]) sends `BatchCreateTasks` calls of up to 100 tasks, several in
//! flight, and reports each document's [`Outcome`]; `PERFORMANCE.md` has the measurements.
//!
//! # Features
//! - `testing`: [`testing::MockCloudTasks`], an in-process Cloud Tasks server for tests.
//! - `cli`: the `cloud-tasks` command-line tool.
//! - `receiver`: [`receiver`], the receiving side: OIDC token verification and the Cloud Tasks
//!   request headers, for the backend's task handler.
//! - `demo`: `cloud-tasks demo` and `cloud-tasks emulator`, with the embedded emulator
//!   (see `docs/LOCAL_DEVELOPMENT.md`).
//!
//! See `ARCHITECTURE.md` for the path of a request through the modules.

#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod auth;
mod batch;
mod client;
mod config;
mod dedupe;
mod error;
mod payload;
pub mod proto;
#[cfg(feature = "receiver")]
pub mod receiver;
mod retry;
mod task;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;
mod validate;

pub use batch::{
    BatchEnqueuer, BatchOptions, DEFAULT_OPERATION_TIMEOUT, EnqueueMode, MAX_BATCH_SIZE,
};
pub use client::{
    CallOptions, ClientBuilder, CloudTasksClient, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ENDPOINT, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_TCP_KEEPALIVE, DEFAULT_TOTAL_TIMEOUT, Enqueued,
};
pub use config::{EMULATOR_HOST_VAR, Settings, Target};
pub use dedupe::document_task_id;
pub use error::{Code, ConfigError, ConfigProblem, Error, Status};
pub use google_cloud_auth::credentials::Credentials;
pub use payload::{PROCESS_DOCUMENT_PATH, ProcessDocumentPayload};
pub use retry::RetryPolicy;
pub use task::{DEFAULT_DISPATCH_DEADLINE, DocumentTask, HttpTask, NewTask};
pub use uuid::Uuid;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
