//! The CLI against `gcloud-tasks-emulator` (PyPI), a Cloud Tasks emulator written
//! independently of this crate, with a local handler receiving what it dispatches. It has
//! CreateTask, RunTask and ListTasks, but no BatchCreateTasks, GetTask, DeleteTask or
//! GetOperation, and it does not de-duplicate named tasks (docs/LOCAL_DEVELOPMENT.md).
//!
//! Needs only `python3`: the first run makes a virtual environment under the target directory
//! with the versions `tests/gcloud_tasks_emulator/requirements.txt` pins (see
//! `common::python`), and tests/gcloud_tasks_emulator/serve.py starts the emulator on
//! 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use cloud_tasks::{
    CallOptions, CloudTasksClient, HttpTask, ListTasksOptions, ProcessDocumentPayload, Uuid,
};
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

/// How long the emulator may take to dispatch what it holds.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The emulator's process, with the test's queue created.
struct Emulator {
    _child: Child,
    /// Closing it stops the emulator.
    _stdin: ChildStdin,
    host: String,
}

impl Emulator {
    async fn start() -> Self {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gcloud_tasks_emulator");
        let requirements = here.join("requirements.txt");
        let python = tokio::task::spawn_blocking(move || {
            python::python_with(
                Path::new(env!("CARGO_TARGET_TMPDIR")),
                "gcloud-tasks-emulator",
                &requirements,
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{error}"));
        let mut child = Command::new(python)
            .arg(here.join("serve.py"))
            .arg(QUEUE_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run gcloud-tasks-emulator's Python");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("gcloud-tasks-emulator did not start within 60 s")
            .unwrap();
        let Some(port) = first.as_deref().and_then(|line| line.strip_prefix("PORT ")) else {
            panic!("gcloud-tasks-emulator did not start ({first:?})");
        };
        Self {
            _child: child,
            _stdin: stdin,
            host: format!("127.0.0.1:{port}"),
        }
    }
}

/// The local handler the emulator dispatches to: counts deliveries per document.
struct Handler {
    url: String,
    deliveries: Arc<Mutex<HashMap<Uuid, u32>>>,
    total: watch::Receiver<usize>,
}

#[derive(Clone)]
struct Received {
    deliveries: Arc<Mutex<HashMap<Uuid, u32>>>,
    total: Arc<watch::Sender<usize>>,
}

async fn receive(State(received): State<Received>, body: axum::body::Bytes) -> StatusCode {
    let Ok(document) = serde_json::from_slice::<ProcessDocumentPayload>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    *received
        .deliveries
        .lock()
        .unwrap()
        .entry(document.document_id)
        .or_default() += 1;
    received.total.send_modify(|total| *total += 1);
    StatusCode::OK
}

impl Handler {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (total, receiver) = watch::channel(0);
        let received = Received {
            deliveries: Arc::default(),
            total: Arc::new(total),
        };
        let deliveries = received.deliveries.clone();
        let router = axum::Router::new()
            .route("/api/tasks/process-document", axum::routing::post(receive))
            .with_state(received);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url,
            deliveries,
            total: receiver,
        }
    }

    /// Waits until `count` deliveries arrived, then returns how many each document got.
    async fn wait_for(&mut self, count: usize) -> HashMap<Uuid, u32> {
        let arrived = tokio::time::timeout(DELIVERY_TIMEOUT, self.total.wait_for(|n| *n >= count))
            .await
            .map(|result| result.is_ok());
        assert_eq!(
            arrived,
            Ok(true),
            "{count} deliveries within {DELIVERY_TIMEOUT:?}: {} arrived",
            *self.total.borrow()
        );
        self.deliveries.lock().unwrap().clone()
    }
}

/// The emulator, the handler, and a client of the library for looking at the queue.
async fn setup() -> (Emulator, Handler, CloudTasksClient) {
    let (emulator, handler) = tokio::join!(Emulator::start(), Handler::start());
    let client = builder()
        .with_service_url(&handler.url)
        .with_emulator_host(&emulator.host)
        .build()
        .unwrap();
    (emulator, handler, client)
}

/// Every task the emulator still holds (ListTasks, which it implements).
async fn queued_tasks(client: &CloudTasksClient) -> usize {
    let mut pager = client.list_tasks(ListTasksOptions::new());
    let mut count = 0;
    while let Some(page) = pager.next_page().await.unwrap() {
        count += page.len();
    }
    count
}

/// `each` delivered exactly once, nothing else delivered, and nothing left to deliver.
async fn assert_delivered_once(
    handler: &mut Handler,
    client: &CloudTasksClient,
    each: &[(Uuid, String)],
) {
    let deliveries = handler.wait_for(each.len()).await;
    assert_eq!(queued_tasks(client).await, 0, "tasks left in the emulator");
    let not_once: Vec<_> = each
        .iter()
        .filter(|(id, _)| deliveries.get(id) != Some(&1))
        .collect();
    assert!(
        not_once.is_empty(),
        "not delivered exactly once: {not_once:?}"
    );
    assert_eq!(deliveries.len(), each.len(), "deliveries: {deliveries:?}");
}

fn cli(emulator: &Emulator, handler: &Handler) -> Command {
    let mut command = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &emulator.host);
    let dir = std::env::temp_dir().join(format!("cloud-tasks-gcloud-emulator-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    // A fresh directory, so no `.env` from the repository leaks into the run.
    command
        .current_dir(dir)
        .env("CLOUD_RUN_SERVICE_URL", &handler.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn output(mut command: Command) -> (Output, String) {
    let output = command.output().await.unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    (output, stderr)
}

fn documents(count: usize) -> Vec<(Uuid, String)> {
    (0..count)
        .map(|index| (Uuid::new_v4(), format!("scan {index}.pdf")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_delivers_the_document_once() {
    let (emulator, mut handler, client) = setup().await;
    let document = documents(1);
    let mut command = cli(&emulator, &handler);
    command.args([
        "enqueue",
        "--document-id",
        &document[0].0.to_string(),
        "--filename",
        &document[0].1,
    ]);
    let (output, stderr) = output(command).await;
    assert!(output.status.success(), "{stderr}");
    assert_delivered_once(&mut handler, &client, &document).await;
}

/// The emulator has no BatchCreateTasks: the default (batch) mode learns it from the first
/// batch's UNIMPLEMENTED, says so once, and sends every document with CreateTask instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_in_its_default_mode_sends_one_task_per_call_and_says_why() {
    let (emulator, mut handler, client) = setup().await;
    let documents = documents(300);
    let dir = std::env::temp_dir().join(format!("cloud-tasks-gcloud-emulator-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("documents.jsonl");
    let lines: Vec<String> = documents
        .iter()
        .map(|(id, name)| serde_json::json!({"document_id": id, "filename": name}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let mut command = cli(&emulator, &handler);
    command.arg("enqueue-batch").arg(&input);
    let (output, stderr) = output(command).await;
    assert!(output.status.success(), "{stderr}");
    assert!(output.stdout.is_empty(), "no failed document");
    let why = "does not implement BatchCreateTasks (it answered UNIMPLEMENTED";
    assert_eq!(stderr.matches(why).count(), 1, "said once: {stderr}");
    assert!(
        stderr.contains("sending one CreateTask per document instead"),
        "{stderr}"
    );
    assert!(
        stderr.contains("300 created, 0 already enqueued, 0 failed"),
        "{stderr}"
    );
    assert_delivered_once(&mut handler, &client, &documents).await;
}

/// GetTask is missing: `status` looks for the document's task with ListTasks instead, finding
/// one scheduled for later and saying plainly when there is none. DeleteTask is missing too:
/// `cancel` names the call and the endpoint instead of a bare "Method not implemented!".
/// Nothing is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_looks_in_the_list_and_cancel_says_which_call_the_emulator_lacks() {
    let (emulator, handler, client) = setup().await;
    let waiting = Uuid::new_v4();
    let name = client.document_task_name(waiting, None);
    let task_id = name.rsplit('/').next().unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    client
        .enqueue(
            HttpTask::post("/api/tasks/process-document")
                .with_task_id(task_id)
                .with_schedule_time(later),
            &CallOptions::new(),
        )
        .await
        .unwrap();

    let mut command = cli(&emulator, &handler);
    command.args(["status", "--json", "--document-id", &waiting.to_string()]);
    let (found, stderr) = output(command).await;
    assert!(found.status.success(), "{stderr}");
    let status: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(status["exists"], true, "{status}");
    assert_eq!(status["taskName"], name.as_str(), "{status}");

    let absent = Uuid::new_v4().to_string();
    let mut command = cli(&emulator, &handler);
    command.args(["status", "--document-id", &absent]);
    let (none, stderr) = output(command).await;
    assert_eq!(none.status.code(), Some(3), "no task: {stderr}");
    assert!(
        String::from_utf8_lossy(&none.stdout).contains("not enqueued, or already done"),
        "{none:?}"
    );

    let mut command = cli(&emulator, &handler);
    command.args(["cancel", "--document-id", &absent]);
    let (cancelled, stderr) = output(command).await;
    assert_eq!(cancelled.status.code(), Some(1), "cancel: {stderr}");
    let expected = format!(
        "error: http://{} does not implement DeleteTask (UNIMPLEMENTED: Method not \
         implemented!): an emulator without DeleteTask",
        emulator.host
    );
    assert!(stderr.starts_with(&expected), "cancel: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(*handler.total.borrow(), 0);
}

/// The emulator does not de-duplicate named tasks: `enqueue --dedupe` of the same document
/// twice creates and delivers two tasks, where Cloud Tasks answers the second with
/// ALREADY_EXISTS. docs/LOCAL_DEVELOPMENT.md and `--dedupe`'s help say so; this test keeps
/// them true for the pinned version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_does_not_de_duplicate_named_tasks() {
    let (emulator, mut handler, _client) = setup().await;
    let document = Uuid::new_v4().to_string();
    for _ in 0..2 {
        let mut command = cli(&emulator, &handler);
        command.args(["enqueue", "--dedupe", "--document-id", &document]);
        command.args(["--filename", "a.pdf"]);
        let (output, stderr) = output(command).await;
        assert!(output.status.success(), "{stderr}");
        assert!(!stderr.contains("already enqueued"), "{stderr}");
    }
    let deliveries = handler.wait_for(2).await;
    assert_eq!(deliveries.get(&document.parse().unwrap()), Some(&2));
}
