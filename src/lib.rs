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
//!     let enqueued = client
//!         .create_document_processing_task(uuid::Uuid::new_v4(), "invoice.pdf")
//!         .await?;
//!     println!("enqueued {}", enqueued.task_name());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Enqueuing
//!
//! - One task: [`CloudTasksClient::enqueue`] returns `Result<Enqueued, Error>`.
//! - Many tasks: [`CloudTasksClient::enqueue_all`] returns one `Result<Enqueued, Error>` per
//!   task, in input order.
//! - A stream of tasks: [`CloudTasksClient::batch_enqueuer`]; [`BatchEnqueuer::push`] returns
//!   `(key, Result<Enqueued, Error>)` pairs as calls finish.
//!
//! Each takes a [`DocumentTask`] (the Python backend's request, optionally de-duplicated) or
//! an [`HttpTask`] (any path, method, body, schedule or name). A success is an [`Enqueued`]:
//! created, with the task, or already enqueued, with its name (a named task that exists). A
//! failure is an [`Error`], whose [`Error::task_may_exist`] says whether the task may exist
//! anyway. The bulk paths send `BatchCreateTasks` calls of up to 100 tasks, several in flight;
//! `PERFORMANCE.md` has the measurements. [`CloudTasksClient::create_document_processing_task`]
//! is the one shortcut, for the Python backend's call.
//!
//! A document enqueued de-duplicated can be looked up, cancelled or run now by its ID
//! ([`CloudTasksClient::document_task`], [`CloudTasksClient::cancel_document`],
//! [`CloudTasksClient::run_document`]); [`CloudTasksClient::list_tasks`] pages through the queue.
//!
//! # Features
//! - `testing`: [`testing::MockCloudTasks`], an in-process Cloud Tasks server for tests.
//! - `cli`: the `cloud-tasks` command-line tool.
//! - `receiver`: [`receiver`], the receiving side: OIDC token verification and the Cloud Tasks
//!   request headers, for the backend's task handler.
//! - `opentelemetry`: the trace context written into each task's headers and restored by the
//!   receiver, and metrics through OpenTelemetry's metrics API ([`telemetry`] names them). The
//!   spans are `tracing`'s, with or without it.
//! - `demo`: `cloud-tasks demo` and `cloud-tasks emulator`, with the embedded emulator
//!   (see `docs/LOCAL_DEVELOPMENT.md`).
//!
//! See `ARCHITECTURE.md` for the path of a request through the modules.
// Without its feature, a module's item links to the feature list instead of breaking the docs.
#![doc = ""]
#![cfg_attr(
    not(feature = "testing"),
    doc = "[`testing::MockCloudTasks`]: #features"
)]
#![cfg_attr(not(feature = "receiver"), doc = "[`receiver`]: #features")]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

mod auth;
mod batch;
mod client;
mod config;
mod dedupe;
mod documents;
mod error;
mod payload;
mod permissions;
pub mod proto;
mod rate;
#[cfg(feature = "receiver")]
pub mod receiver;
mod retry;
mod task;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod transport;
mod validate;

pub use batch::{BatchEnqueuer, BatchOptions, DEFAULT_BATCH_TIMEOUT, EnqueueMode, MAX_BATCH_SIZE};
pub use client::{
    CallOptions, ClientBuilder, CloudTasksClient, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ENDPOINT, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_TCP_KEEPALIVE, DEFAULT_TOTAL_TIMEOUT, Enqueued,
};
pub use config::{
    CLOUD_RUN_SERVICE_VAR, EMULATOR_HOST_VAR, OIDC_ISSUER_VAR, OIDC_VERIFIED_BY_CLOUD_RUN_VAR,
    SettingSource, Settings, Target,
};
pub use dedupe::document_task_id;
pub use documents::{ListTasksOptions, MAX_LIST_PAGE_SIZE, TaskPager};
pub use error::{Code, ConfigError, ConfigProblem, Error, Status};
pub use google_cloud_auth::credentials::Credentials;
pub use payload::{PROCESS_DOCUMENT_PATH, ProcessDocumentPayload};
pub use rate::{DEFAULT_CEILING, RAMP_INTERVAL, RAMP_START, RateLimit};
pub use retry::RetryPolicy;
pub use task::{DEFAULT_DISPATCH_DEADLINE, DocumentTask, HttpTask, NewTask};
pub use uuid::Uuid;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
