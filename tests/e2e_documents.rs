//! Document operations end to end against the crates.io emulator on 127.0.0.1:0: a
//! de-duplicated document scheduled an hour ahead waits in the queue, `status` and `list` show
//! it, `run` dispatches it to a local handler, `cancel` removes another, and `status` then says
//! there is no task. The library and the `cloud-tasks` binary are both checked.

#[path = "common/emulator.rs"]
mod emulator;

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, SystemTime};

use axum::routing::post;
use cloud_tasks::{
    CallOptions, CloudTasksClient, HttpTask, ListTasksOptions, PROCESS_DOCUMENT_PATH,
    ProcessDocumentPayload, Uuid, document_task_id,
};
use emulator::{Emulator, LOCATION, LocalServer, PROJECT, SERVICE_ACCOUNT};
use tokio::sync::mpsc;

const QUEUE: &str = "document-processing";
const WAIT: Duration = Duration::from_secs(15);

struct Setup {
    client: CloudTasksClient,
    emulator: Emulator,
    handler: SocketAddr,
    /// The bodies the handler received.
    deliveries: mpsc::UnboundedReceiver<ProcessDocumentPayload>,
}

/// The emulator, a handler that answers every delivery with 200, and a client for both.
async fn start() -> Setup {
    let server = LocalServer::bind().await;
    let handler = server.addr;
    let (emulator, client) = Emulator::start(QUEUE, &server.url()).await;
    let (delivered, deliveries) = mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        PROCESS_DOCUMENT_PATH,
        post(move |body: axum::body::Bytes| {
            let delivered = delivered.clone();
            async move {
                if let Ok(payload) = serde_json::from_slice(&body) {
                    delivered.send(payload).ok();
                }
                "done"
            }
        }),
    );
    server.serve(router);
    Setup {
        client,
        emulator,
        handler,
        deliveries,
    }
}

/// Enqueues `document_id` de-duplicated (the task `enqueue --dedupe` creates), scheduled an
/// hour ahead so that it waits in the queue.
async fn enqueue_for_later(client: &CloudTasksClient, document_id: Uuid) {
    let payload = ProcessDocumentPayload {
        document_id,
        filename: "later.pdf".to_owned(),
    };
    let task = HttpTask::post(PROCESS_DOCUMENT_PATH)
        .with_json_body(payload.to_json_bytes())
        .with_task_id(document_task_id(document_id, None))
        .with_schedule_time(SystemTime::now() + Duration::from_secs(3600));
    let enqueued = client.enqueue(task, &CallOptions::new()).await.unwrap();
    assert_eq!(
        enqueued.task_name(),
        client.document_task_name(document_id, None)
    );
}

/// Runs the `cloud-tasks` binary against the emulator.
async fn cli(setup: &Setup, args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-e2e-docs-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud-tasks"))
        .args(args)
        .env_clear()
        .env("GCP_PROJECT_ID", PROJECT)
        .env("GCP_LOCATION", LOCATION)
        .env("CLOUD_TASKS_QUEUE", QUEUE)
        .env("CLOUD_RUN_SERVICE_URL", format!("http://{}", setup.handler))
        .env("CLOUD_RUN_SERVICE_ACCOUNT", SERVICE_ACCOUNT)
        .env("CLOUD_TASKS_EMULATOR_HOST", setup.emulator.addr.to_string())
        .current_dir(dir)
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Waits until the document's task is gone: the emulator deletes it once the handler's 200
/// is in. (Its wait-until-idle endpoint would also wait for the tasks scheduled later.)
async fn wait_gone(client: &CloudTasksClient, document_id: Uuid) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .document_task(document_id, None, &CallOptions::new())
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the task that ran is still there after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_run_and_cancel_on_the_emulator() {
    let mut setup = start().await;
    let client = setup.client.clone();
    let options = CallOptions::new();
    let to_run = Uuid::new_v4();
    let to_cancel = Uuid::new_v4();
    let waiting = Uuid::new_v4();
    for document_id in [to_run, to_cancel, waiting] {
        enqueue_for_later(&client, document_id).await;
    }

    // status: the task waits, scheduled about an hour ahead, never dispatched.
    let task = client
        .document_task(to_run, None, &options)
        .await
        .unwrap()
        .expect("the task waits in the queue");
    let scheduled = SystemTime::try_from(task.schedule_time.unwrap()).unwrap();
    let ahead = scheduled.duration_since(SystemTime::now()).unwrap();
    assert!(ahead > Duration::from_secs(3500), "{ahead:?}");
    assert_eq!(task.dispatch_count, 0);
    assert!(task.first_attempt.is_none());

    // list: every task, over several pages (the emulator ends the list with an empty page).
    let mut pager = client.list_tasks(ListTasksOptions::new().with_page_size(2));
    let mut names = Vec::new();
    let mut pages = 0;
    while let Some(page) = pager.next_page().await.unwrap() {
        pages += 1;
        names.extend(page.into_iter().map(|task| task.name));
    }
    names.sort();
    let mut expected: Vec<String> = [to_run, to_cancel, waiting]
        .into_iter()
        .map(|id| client.document_task_name(id, None))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(pages, 2);

    // run: dispatched now to the handler, deleted on its 200.
    let ran = client.run_document(to_run, None, &options).await.unwrap();
    assert_eq!(ran.name, client.document_task_name(to_run, None));
    let delivered = tokio::time::timeout(WAIT, setup.deliveries.recv())
        .await
        .expect("the run task was delivered in time")
        .unwrap();
    assert_eq!(delivered.document_id, to_run);
    wait_gone(&client, to_run).await;

    // cancel: deleted, then nothing to cancel.
    assert!(
        client
            .cancel_document(to_cancel, None, &options)
            .await
            .unwrap()
    );
    assert!(
        !client
            .cancel_document(to_cancel, None, &options)
            .await
            .unwrap()
    );
    assert!(
        client
            .document_task(to_cancel, None, &options)
            .await
            .unwrap()
            .is_none()
    );
    let error = client
        .run_document(to_cancel, None, &options)
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");

    // The CLI says the same.
    let waiting_id = waiting.to_string();
    let status = cli(&setup, &["status", "--document-id", &waiting_id, "--json"]).await;
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let answer: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(answer["exists"], true);
    assert_eq!(answer["task"]["dispatchCount"], 0);
    assert_eq!(answer["taskName"], client.document_task_name(waiting, None));

    let listed = cli(&setup, &["list", "--page-size", "1"]).await;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    let lines: Vec<String> = stdout(&listed).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(&document_task_id(waiting, None)),
        "{lines:?}"
    );

    let cancel_id = to_cancel.to_string();
    let gone = cli(&setup, &["status", "--document-id", &cancel_id]).await;
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
    assert!(
        stdout(&gone).contains("not enqueued, or already done"),
        "{gone:?}"
    );
    assert!(setup.deliveries.try_recv().is_err(), "one delivery in all");
}
