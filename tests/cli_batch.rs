//! `cloud-tasks enqueue-batch` against the mock server: outcomes, output, exit codes, reruns.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{Code, Uuid};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A fresh empty directory, so no `.env` from the repository leaks into the run.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-cli-batch-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn document_line(document_id: Uuid, filename: &str) -> String {
    serde_json::json!({"document_id": document_id, "filename": filename}).to_string()
}

fn documents(count: usize) -> Vec<(Uuid, String)> {
    (0..count)
        .map(|index| (Uuid::new_v4(), format!("scan {index}.pdf")))
        .collect()
}

fn write_input(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

async fn run(server: &MockCloudTasks, dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host());
    command
        .current_dir(dir)
        .arg("enqueue-batch")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).await.unwrap();
        drop(pipe);
    }
    child.wait_with_output().await.unwrap()
}

fn stdout_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_listed_on_stdout_and_bad_lines_do_not_stop_the_rest() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let docs = documents(205);
    let mut lines: Vec<String> = docs
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    lines.insert(2, "{not json".to_owned());
    let empty_name = Uuid::new_v4();
    lines.insert(10, document_line(empty_name, ""));
    let refused = docs[150].0;
    server.fail_tasks_containing(&refused.to_string(), Code::PermissionDenied, "no actAs");
    let input = write_input(&dir, "docs.jsonl", &lines);

    let output = run(&server, &dir, &[input.to_str().unwrap()], None).await;

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("line 3: skipped:"), "{err}");
    assert!(
        err.contains("204 created, 0 already enqueued, 3 failed"),
        "{err}"
    );
    let mut failed = stdout_lines(&output);
    failed.sort_by_key(|line| line["line"].as_u64());
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0]["document_id"], empty_name.to_string());
    assert_eq!(failed[0]["line"], 11);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("file name is empty")
    );
    assert_eq!(failed[1]["document_id"], refused.to_string());
    assert_eq!(failed[1]["filename"], "scan 150.pdf");
    assert_eq!(failed[1]["line"], 153);
    assert!(
        failed[1]["error"]
            .as_str()
            .unwrap()
            .contains("permission denied")
    );

    assert_eq!(server.tasks().len(), 204);
    let calls = server.batch_create_tasks_calls();
    assert!(calls.iter().all(|call| call.message.requests.len() <= 100));
    assert_eq!(
        calls
            .iter()
            .map(|call| call.message.requests.len())
            .sum::<usize>(),
        205
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deduplicated_rerun_after_an_interruption_creates_only_what_is_missing() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let lines: Vec<String> = documents(150)
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let partial = write_input(&dir, "partial.jsonl", &lines[..60]);
    let full = write_input(&dir, "full.jsonl", &lines);

    let first = run(
        &server,
        &dir,
        &[partial.to_str().unwrap(), "--dedupe"],
        None,
    )
    .await;
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(stderr(&first).contains("60 created, 0 already enqueued, 0 failed"));

    let rerun = run(
        &server,
        &dir,
        &[full.to_str().unwrap(), "--dedupe", "--concurrency", "3"],
        None,
    )
    .await;

    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    assert!(
        stderr(&rerun).contains("90 created, 60 already enqueued, 0 failed"),
        "{}",
        stderr(&rerun)
    );
    assert!(rerun.stdout.is_empty());
    assert_eq!(server.tasks().len(), 150);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_output_fed_back_through_stdin_is_enqueued() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let lines: Vec<String> = documents(10)
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let input = write_input(&dir, "docs.jsonl", &lines);
    // A definite failure (retried ones would succeed on their own), e.g. IAM not yet granted.
    server.push_fault(Fault::Reject(
        Code::PermissionDenied,
        "not yet granted".into(),
    ));

    let first = run(&server, &dir, &[input.to_str().unwrap()], None).await;
    assert_eq!(first.status.code(), Some(1));
    assert_eq!(stdout_lines(&first).len(), 10);
    assert!(server.tasks().is_empty());

    let retry = run(&server, &dir, &["-", "--per-task"], Some(&first.stdout)).await;

    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    assert!(stderr(&retry).contains("10 created, 0 already enqueued, 0 failed"));
    assert_eq!(server.tasks().len(), 10);
    assert_eq!(server.create_task_calls().len(), 10, "--per-task");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_configuration_problems_exit_with_2() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();

    let missing = run(&server, &dir, &["no-such-file.jsonl"], None).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot open no-such-file.jsonl"));

    let zero = run(&server, &dir, &["-", "--concurrency", "0"], Some(b"")).await;
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));

    let unconfigured = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud-tasks"))
        .env_clear()
        .current_dir(&dir)
        .args(["enqueue-batch", "-"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(unconfigured.status.code(), Some(2));
    assert!(stderr(&unconfigured).contains("GCP_PROJECT_ID"));
    assert!(server.batch_create_tasks_calls().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_reading_finishes_what_was_read_and_a_dedupe_rerun_completes() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let lines: Vec<String> = documents(400)
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let mut command = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host());
    command
        .current_dir(&dir)
        .args(["enqueue-batch", "-", "--dedupe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The first 250 lines arrive, then the input stalls (stdin stays open).
    stdin
        .write_all((lines[..250].join("\n") + "\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.tasks().len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "two full batches were not sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pid = libc::pid_t::try_from(child.id().unwrap()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let interrupted = child.wait_with_output().await.unwrap();
    drop(stdin);

    let err = stderr(&interrupted);
    assert_eq!(interrupted.status.code(), Some(130), "{err}");
    assert!(
        err.contains("250 created, 0 already enqueued, 0 failed"),
        "{err}"
    );
    assert!(err.contains("run the same command again"), "{err}");
    assert_eq!(
        server.tasks().len(),
        250,
        "the 50 read but unsent are sent before exiting"
    );

    let full = write_input(&dir, "all.jsonl", &lines);
    let rerun = run(&server, &dir, &[full.to_str().unwrap(), "--dedupe"], None).await;
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    assert!(
        stderr(&rerun).contains("150 created, 250 already enqueued, 0 failed"),
        "{}",
        stderr(&rerun)
    );
    assert_eq!(server.tasks().len(), 400);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ctrl_c_aborts_the_wait_for_calls_in_flight() {
    let server = MockCloudTasks::start().await.unwrap();
    // The one batch call hangs far longer than the test waits.
    server.push_fault(Fault::Delay(std::time::Duration::from_secs(120)));
    let dir = temp_dir();
    let lines: Vec<String> = documents(100)
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let mut child = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host())
        .current_dir(&dir)
        .args(["enqueue-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all((lines.join("\n") + "\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // A full batch of 100 goes out (and hangs) while stdin stays open for more.
    while server.batch_create_tasks_calls().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no batch was sent");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pid = libc::pid_t::try_from(child.id().unwrap()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut stderr_lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = stderr_lines.next_line().await.unwrap().unwrap();
    assert!(waiting.contains("Ctrl-C again"), "{waiting}");
    let started = std::time::Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("the second Ctrl-C ends the run at once")
        .unwrap();
    let mut rest = Vec::new();
    while let Some(line) = stderr_lines.next_line().await.unwrap() {
        rest.push(line);
    }
    let rest = rest.join("\n");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        rest.contains(
            "aborted: 100 documents read up to input line 100 got no answer and may or may not \
             have been enqueued (those counted above are settled); rerun with --dedupe to \
             enqueue only what is missing"
        ),
        "{rest}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_and_estimates_without_settings_or_sending() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let mut lines: Vec<String> = documents(1500)
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    lines.push("{not json".to_owned());
    let input = write_input(&dir, "docs.jsonl", &lines);
    let dry_run = |args: &[&str]| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud-tasks"))
            .env_clear()
            .current_dir(&dir)
            .arg("enqueue-batch")
            .arg("--dry-run")
            .args(args)
            .arg(&input)
            .output()
    };

    let ramp = dry_run(&[]).await.unwrap();
    assert_eq!(ramp.status.code(), Some(0), "{}", stderr(&ramp));
    let text = String::from_utf8(ramp.stdout).unwrap();
    assert!(
        text.contains("1500 documents (1 lines are not documents and would be skipped)"),
        "{text}"
    );
    assert!(text.contains("from 500 tasks/s"), "{text}");
    assert!(text.contains("takes at least 3s"), "{text}");
    assert!(text.contains("nothing was sent"), "{text}");

    let fixed = dry_run(&["--no-ramp", "--rate", "100"]).await.unwrap();
    let text = String::from_utf8(fixed.stdout).unwrap();
    assert!(text.contains("at 100 tasks/s"), "{text}");
    assert!(text.contains("takes at least 15s"), "{text}");

    let unlimited = dry_run(&["--no-ramp"]).await.unwrap();
    let text = String::from_utf8(unlimited.stdout).unwrap();
    assert!(text.contains("depends on the server"), "{text}");

    assert!(server.batch_create_tasks_calls().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_follows_the_rate_and_the_help_shows_the_backfill_workflow() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let lines: Vec<String> = documents(600)
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let input = write_input(&dir, "docs.jsonl", &lines);
    let started = std::time::Instant::now();
    let output = run(
        &server,
        &dir,
        &[input.to_str().unwrap(), "--no-ramp", "--rate", "400"],
        None,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(server.tasks().len(), 600);
    // 6 batches of 100 at 400 tasks/s: the last one may go 1.25 s after the first.
    assert!(took >= std::time::Duration::from_millis(1200), "{took:?}");

    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloud-tasks"))
        .args(["enqueue-batch", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "500/50/5",
        "--dry-run",
        "--no-ramp",
        "--rate <N>",
        "Ctrl-C",
        "--dedupe docs.jsonl",
        "cloud-tasks status --document-id",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A server without BatchCreateTasks, with every batch sent at once (`--no-ramp`, 8 in flight):
/// the batches in flight are all refused, yet the switch to one CreateTask per document is
/// said once on stderr and logged once, and every document is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_batch_create_tasks_is_said_once_and_loses_nothing() {
    let server = MockCloudTasks::start().await.unwrap();
    server.set_unimplemented(["BatchCreateTasks"]);
    let dir = temp_dir();
    let docs = documents(1000);
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let input = write_input(&dir, "documents.jsonl", &lines);
    let mut command = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host());
    command
        .current_dir(&dir)
        .env("RUST_LOG", "cloud_tasks=warn")
        .arg("enqueue-batch")
        .arg(&input)
        .arg("--no-ramp")
        .stdin(Stdio::null());

    let output = command.output().await.unwrap();

    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(output.stdout.is_empty());
    let note = format!(
        "note: {} does not implement BatchCreateTasks (it answered UNIMPLEMENTED",
        server.uri()
    );
    assert_eq!(stderr.matches(&note).count(), 1, "{stderr}");
    let log = "the endpoint does not implement BatchCreateTasks";
    assert_eq!(stderr.matches(log).count(), 1, "{stderr}");
    assert!(
        stderr.contains("1000 created, 0 already enqueued, 0 failed"),
        "{stderr}"
    );
    let batches = server.batch_create_tasks_calls().len();
    assert!(
        (1..=8).contains(&batches),
        "only the batches in flight asked: {batches}"
    );
    assert_eq!(server.create_task_calls().len(), 1000);
    let mut stored: Vec<Uuid> = server
        .tasks()
        .iter()
        .map(|task| match &task.message_type {
            Some(cloud_tasks::proto::MessageType::HttpRequest(http)) => {
                serde_json::from_slice::<Value>(&http.body).unwrap()["document_id"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    stored.sort_unstable();
    let mut expected: Vec<Uuid> = docs.iter().map(|(id, _)| *id).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected, "each document stored once");
    std::fs::remove_dir_all(dir).unwrap();
}
