//! `cloud-tasks enqueue` end to end: settings from the environment, output and exit codes.

mod common;

use std::path::PathBuf;
use std::process::Output;

use cloud_tasks::Code;
use cloud_tasks::testing::{Fault, MockCloudTasks};
use common::*;

const DOCUMENT_ID: &str = "9b2f3c1e-8d4a-4e6b-a1c2-3d4e5f6a7b8c";

/// An empty working directory, so no `.env` from the repository leaks in.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every setting, with the emulator at `emulator_host`.
fn full_env(emulator_host: String) -> Vec<(&'static str, String)> {
    vec![
        ("GCP_PROJECT_ID", PROJECT.to_owned()),
        ("GCP_LOCATION", LOCATION.to_owned()),
        ("CLOUD_TASKS_QUEUE", QUEUE.to_owned()),
        ("CLOUD_RUN_SERVICE_URL", SERVICE_URL.to_owned()),
        ("CLOUD_RUN_SERVICE_ACCOUNT", SERVICE_ACCOUNT.to_owned()),
        ("CLOUD_TASKS_EMULATOR_HOST", emulator_host),
    ]
}

async fn run(args: &[&str], env: &[(&str, String)], dir: &PathBuf) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud-tasks"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .output()
        .await
        .unwrap()
}

/// `enqueue --document-id DOCUMENT_ID --filename <filename>` and `extra`.
fn enqueue_args<'a>(filename: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "enqueue",
        "--document-id",
        DOCUMENT_ID,
        "--filename",
        filename,
    ];
    args.extend_from_slice(extra);
    args
}

/// `enqueue --timeout 2s` against `emulator_host`: its output and how long it took.
async fn enqueue_with_2s_timeout(emulator_host: String) -> (Output, std::time::Duration) {
    let started = std::time::Instant::now();
    let output = run(
        &enqueue_args("a.pdf", &["--timeout", "2s"]),
        &full_env(emulator_host),
        &scratch_dir(),
    )
    .await;
    (output, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn enqueue_prints_the_task_name() {
    let server = MockCloudTasks::start().await.unwrap();
    let output = run(
        &enqueue_args("report.pdf", &[]),
        &full_env(server.host()),
        &scratch_dir(),
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let tasks = server.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!(text(&output.stdout), format!("{}\n", tasks[0].name));
    let body = match &tasks[0].message_type {
        Some(cloud_tasks::proto::MessageType::HttpRequest(http)) => http.body.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        text(&body),
        format!(r#"{{"document_id": "{DOCUMENT_ID}", "filename": "report.pdf"}}"#)
    );
}

#[tokio::test]
async fn enqueue_json_prints_the_task() {
    let server = MockCloudTasks::start().await.unwrap();
    let output = run(
        &enqueue_args("report.pdf", &["--json"]),
        &full_env(server.host()),
        &scratch_dir(),
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let task: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(task["name"], server.tasks()[0].name.as_str());
    assert_eq!(task["dispatchDeadline"], "600s");
    let http = &task["httpRequest"];
    assert_eq!(
        http["url"],
        format!("{SERVICE_URL}/api/tasks/process-document")
    );
    assert_eq!(http["httpMethod"], "POST");
    assert_eq!(http["headers"]["Content-Type"], "application/json");
    assert_eq!(http["oidcToken"]["serviceAccountEmail"], SERVICE_ACCOUNT);
    assert_eq!(http["oidcToken"]["audience"], SERVICE_URL);
}

#[tokio::test]
async fn settings_come_from_a_dotenv_file_and_the_environment_wins() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = scratch_dir();
    let dotenv: String = full_env(server.host())
        .iter()
        .map(|(key, value)| {
            let value = if *key == "CLOUD_TASKS_QUEUE" {
                "from-dotenv"
            } else {
                value
            };
            format!("{key}={value}\n")
        })
        .collect();
    std::fs::write(dir.join(".env"), dotenv).unwrap();
    let output = run(
        &enqueue_args("a.pdf", &[]),
        &[("CLOUD_TASKS_QUEUE", "from-env".to_owned())],
        &dir,
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        server.create_task_calls()[0].message.parent,
        "projects/my-project/locations/us-central1/queues/from-env"
    );
}

#[tokio::test]
async fn missing_settings_exit_2_naming_every_variable() {
    let output = run(&enqueue_args("a.pdf", &[]), &[], &scratch_dir()).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for variable in [
        "GCP_PROJECT_ID",
        "CLOUD_RUN_SERVICE_URL",
        "CLOUD_RUN_SERVICE_ACCOUNT",
    ] {
        assert!(stderr.contains(variable), "{stderr}");
    }
}

#[tokio::test]
async fn a_bad_document_id_is_a_usage_error() {
    let output = run(
        &[
            "enqueue",
            "--document-id",
            "not-a-uuid",
            "--filename",
            "a.pdf",
        ],
        &[],
        &scratch_dir(),
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("not-a-uuid"));
}

#[tokio::test]
async fn a_failed_call_exits_1_with_one_actionable_line() {
    let server = MockCloudTasks::start().await.unwrap();
    server.push_fault(Fault::Reject(Code::PermissionDenied, "denied".to_owned()));
    let output = run(
        &enqueue_args("a.pdf", &[]),
        &full_env(server.host()),
        &scratch_dir(),
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: permission denied"), "{stderr}");
    assert!(stderr.contains("roles/cloudtasks.enqueuer"), "{stderr}");
}

#[tokio::test]
/// A server that accepts the connection and never answers: the call ends at the deadline. The
/// first call on a connection goes out with the connection preface (as tonic's channel sends
/// it), so the server may have it: the error says the task may exist.
async fn timeout_bounds_a_call_to_a_hung_server() {
    let (host, hold) = silent_server().await;
    let (output, elapsed) = enqueue_with_2s_timeout(host).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(elapsed < std::time::Duration::from_secs(4), "{elapsed:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("did not answer within 2s"), "{stderr}");
    assert!(stderr.contains("may or may not exist"), "{stderr}");
    hold.abort();
}

#[tokio::test]
async fn timeout_bounds_a_call_with_no_server() {
    let (output, elapsed) = enqueue_with_2s_timeout(unused_host()).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(elapsed < std::time::Duration::from_secs(4), "{elapsed:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains("nothing was sent"), "{stderr}");
}

#[tokio::test]
async fn dedupe_enqueues_a_document_once_even_under_faults() {
    let server = MockCloudTasks::start().await.unwrap();
    let env = full_env(server.host());
    let dir = scratch_dir();
    let args = enqueue_args("a.pdf", &["--dedupe"]);
    server.push_fault(Fault::Reject(Code::Unavailable, "before store".to_owned()));
    let first = run(&args, &env, &dir).await;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    server.push_fault(Fault::FailAfterStore(
        Code::Unavailable,
        "after store".to_owned(),
    ));
    let second = run(&args, &env, &dir).await;
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let third = run(&args, &env, &dir).await;
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));

    let tasks = server.tasks();
    assert_eq!(tasks.len(), 1, "stored exactly once");
    for output in [&first, &second, &third] {
        assert_eq!(text(&output.stdout), format!("{}\n", tasks[0].name));
    }
    assert!(text(&first.stderr).is_empty(), "{}", text(&first.stderr));
    for output in [&second, &third] {
        assert!(
            text(&output.stderr).contains("already enqueued"),
            "{}",
            text(&output.stderr)
        );
    }
}

#[tokio::test]
async fn an_invalid_timeout_is_a_usage_error() {
    let output = run(
        &enqueue_args("a.pdf", &["--timeout", "soon"]),
        &[],
        &scratch_dir(),
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("soon"));
}
