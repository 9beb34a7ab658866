//! `cloud-tasks status | cancel | run | list` against the mock server: output and exit codes.

mod common;

use std::process::Output;

use cloud_tasks::Code;
use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{CallOptions, CloudTasksClient, DocumentTask, Uuid};
use common::*;

async fn run(server: &MockCloudTasks, args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-cli-docs-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host())
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

async fn enqueued(client: &CloudTasksClient) -> Uuid {
    let document_id = Uuid::new_v4();
    client
        .enqueue(
            DocumentTask::new(document_id, "a.pdf").deduplicated(),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    document_id
}

#[tokio::test]
async fn status_describes_the_task_and_exits_0() {
    let (server, client) = mock_and_client().await;
    let document_id = enqueued(&client).await;
    let id = document_id.to_string();

    let output = run(&server, &["status", "--document-id", &id]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = stdout(&output);
    assert!(
        text.contains(&client.document_task_name(document_id, None)),
        "{text}"
    );
    assert!(text.contains("0 dispatched, 0 answered"), "{text}");
    assert!(text.contains("first       none yet"), "{text}");

    let output = run(&server, &["status", "--document-id", &id, "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(answer["exists"], true);
    assert_eq!(answer["documentId"], id);
    assert_eq!(answer["task"]["name"], answer["taskName"]);
    assert_eq!(answer["task"]["dispatchCount"], 0);
}

#[tokio::test]
async fn status_of_a_document_without_a_task_exits_3() {
    let server = MockCloudTasks::start().await.unwrap();
    let id = Uuid::new_v4().to_string();
    let output = run(&server, &["status", "--document-id", &id]).await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        stdout(&output).contains("not enqueued, or already done"),
        "{output:?}"
    );

    let output = run(&server, &["status", "--document-id", &id, "--json"]).await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(answer["exists"], false);
    assert!(answer.get("task").is_none());
}

#[tokio::test]
async fn a_failed_status_call_exits_1() {
    let server = MockCloudTasks::start().await.unwrap();
    server.push_fault(Fault::Reject(Code::PermissionDenied, "denied".into()));
    let id = Uuid::new_v4().to_string();
    let output = run(&server, &["status", "--document-id", &id]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        stderr(&output).contains("cloudtasks.tasks.get"),
        "{output:?}"
    );
}

#[tokio::test]
async fn cancel_twice_exits_0_both_times() {
    let (server, client) = mock_and_client().await;
    let id = enqueued(&client).await.to_string();

    let first = run(&server, &["cancel", "--document-id", &id]).await;
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert!(stdout(&first).starts_with("cancelled "), "{first:?}");
    assert!(server.tasks().is_empty());

    let second = run(&server, &["cancel", "--document-id", &id]).await;
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    assert!(stdout(&second).contains("no task to cancel"), "{second:?}");
}

#[tokio::test]
async fn run_dispatches_or_exits_3_without_a_task() {
    let (server, client) = mock_and_client().await;
    let id = enqueued(&client).await.to_string();

    let output = run(&server, &["run", "--document-id", &id]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stdout(&output).contains("dispatching "), "{output:?}");
    assert_eq!(server.run_task_calls().len(), 1);

    let absent = Uuid::new_v4().to_string();
    let output = run(&server, &["run", "--document-id", &absent]).await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(stderr(&output).contains("has no task to run"), "{output:?}");
}

#[tokio::test]
async fn a_key_selects_another_task() {
    let (server, client) = mock_and_client().await;
    let document_id = Uuid::new_v4();
    client
        .enqueue(
            DocumentTask::new(document_id, "a.pdf").deduplicated_with_key("v2"),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    let id = document_id.to_string();
    let without = run(&server, &["status", "--document-id", &id]).await;
    assert_eq!(without.status.code(), Some(3), "{without:?}");
    let with = run(
        &server,
        &["status", "--document-id", &id, "--dedupe-key", "v2"],
    )
    .await;
    assert_eq!(with.status.code(), Some(0), "{with:?}");
    assert!(stdout(&with).contains("(key \"v2\")"), "{with:?}");
}

#[tokio::test]
async fn list_prints_every_page_and_stops_at_the_limit() {
    let (server, client) = mock_and_client().await;
    for _ in 0..5 {
        enqueued(&client).await;
    }
    let output = run(&server, &["list", "--page-size", "2"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(stderr(&output).contains("5 task(s)"), "{output:?}");
    assert_eq!(server.list_tasks_calls().len(), 3);

    let output = run(&server, &["list", "--limit", "3", "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let tasks: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(tasks.len(), 3);
    let stored: Vec<String> = server.tasks().into_iter().map(|task| task.name).collect();
    for task in &tasks {
        assert!(stored.contains(&task["name"].as_str().unwrap().to_owned()));
    }
}
