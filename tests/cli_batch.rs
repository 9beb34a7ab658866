//! `cloud-tasks enqueue-batch` against the mock server: outcomes, output, exit codes, reruns.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{Code, Uuid};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};

/// A fresh empty directory, so no `.env` from the repository leaks into the run.
fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-cli-batch-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn document_line(document_id: Uuid, filename: &str) -> String {
    serde_json::json!({"document_id": document_id, "filename": filename}).to_string()
}

/// One input line per document.
fn document_lines(docs: &[(Uuid, String)]) -> Vec<String> {
    docs.iter()
        .map(|(id, name)| document_line(*id, name))
        .collect()
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
    command.current_dir(dir).arg("enqueue-batch").args(args);
    output_with_stdin(command, stdin).await
}

fn stdout_lines(output: &Output) -> Vec<Value> {
    json_lines(&output.stdout)
}

fn json_lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Starts `enqueue-batch -` with `args` and writes `lines` to it. Its stdin stays open (the
/// input stalls) until the returned end is dropped.
async fn spawn_with_input(
    host: &str,
    dir: &Path,
    args: &[&str],
    lines: &[String],
) -> (Child, ChildStdin) {
    let mut child = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), host)
        .current_dir(dir)
        .args(["enqueue-batch", "-"])
        .args(args)
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
    (child, stdin)
}

/// Waits until `done` holds, polling for 10 s at most, then fails with `not_done`.
async fn wait_until(done: impl Fn() -> bool, not_done: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{not_done}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id().unwrap()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// The next `count` failure records, as the running command writes them.
async fn next_records(
    stdout: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    count: usize,
) -> Vec<Value> {
    let mut records = Vec::new();
    while records.len() < count {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), stdout.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {count} failure records reached stdout",
                    records.len()
                )
            })
            .unwrap()
            .expect("stdout closed early");
        records.push(serde_json::from_str(&line).unwrap());
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_listed_on_stdout_and_bad_lines_do_not_stop_the_rest() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let docs = documents(205);
    let mut lines = document_lines(&docs);
    lines.insert(2, "{not json".to_owned());
    let empty_name = Uuid::new_v4();
    lines.insert(10, document_line(empty_name, ""));
    let refused = docs[150].0;
    server.fail_tasks_containing(&refused.to_string(), Code::PermissionDenied, "no actAs");
    let input = write_input(&dir, "docs.jsonl", &lines);

    let output = run(&server, &dir, &[input.to_str().unwrap()], None).await;

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("204 created, 0 already enqueued, 3 failed"),
        "{err}"
    );
    let mut failed = stdout_lines(&output);
    failed.sort_by_key(|line| line["line"].as_u64());
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0]["line"], 3);
    assert_eq!(failed[0]["document_id"], Value::Null);
    assert_eq!(failed[0]["code"], Value::Null);
    assert_eq!(failed[0]["may_exist"], false);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("line 3 skipped: not JSON")
    );
    assert_eq!(failed[1]["document_id"], empty_name.to_string());
    assert_eq!(failed[1]["line"], 11);
    assert_eq!(failed[1]["code"], Value::Null, "rejected before sending");
    assert_eq!(failed[1]["may_exist"], false);
    assert!(
        failed[1]["error"]
            .as_str()
            .unwrap()
            .contains("file name is empty")
    );
    assert_eq!(failed[2]["document_id"], refused.to_string());
    assert_eq!(failed[2]["filename"], "scan 150.pdf");
    assert_eq!(failed[2]["line"], 153);
    assert_eq!(failed[2]["code"], "PERMISSION_DENIED");
    assert_eq!(failed[2]["may_exist"], false);
    assert!(
        failed[2]["error"]
            .as_str()
            .unwrap()
            .contains("permission denied")
    );
    // Without --dedupe: only what created no task goes back in, and never with --dedupe.
    assert!(
        err.contains(
            "jq -c 'select(.may_exist == false)' failed.jsonl | cloud-tasks enqueue-batch -"
        ),
        "{err}"
    );
    assert!(err.contains("keep resuming without --dedupe"), "{err}");

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
    let lines = document_lines(&documents(150));
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
    let lines = document_lines(&documents(10));
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
    let lines = document_lines(&documents(400));
    // The first 250 lines arrive, then the input stalls (stdin stays open).
    // A linger longer than the test, so the 50 of the third batch stay read but unsent.
    let (child, stdin) = spawn_with_input(
        &server.host(),
        &dir,
        &["--dedupe", "--linger", "1h"],
        &lines[..250],
    )
    .await;
    wait_until(
        || server.tasks().len() >= 200,
        "two full batches were not sent",
    )
    .await;
    send_signal(&child, libc::SIGINT);
    let interrupted = child.wait_with_output().await.unwrap();
    drop(stdin);

    let err = stderr(&interrupted);
    assert_eq!(interrupted.status.code(), Some(130), "{err}");
    assert!(
        err.contains("250 created, 0 already enqueued, 0 failed"),
        "{err}"
    );
    assert!(
        err.contains(
            "interrupted by SIGINT (Ctrl-C): every document up to input line 250 is counted above"
        ),
        "{err}"
    );
    // Only the unread rest goes back in: a rerun of the whole file would rely on names staying
    // taken, which lasts about an hour after a task ran.
    assert!(
        err.contains(
            "to resume: tail -n +251 <this run's input> | cloud-tasks enqueue-batch --dedupe -"
        ),
        "{err}"
    );
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
    let lines = document_lines(&documents(100));
    let (mut child, _stdin) = spawn_with_input(&server.host(), &dir, &[], &lines).await;
    // A full batch of 100 goes out (and hangs) while stdin stays open for more.
    wait_until(
        || !server.batch_create_tasks_calls().is_empty(),
        "no batch was sent",
    )
    .await;
    send_signal(&child, libc::SIGINT);
    let mut stderr_lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = stderr_lines.next_line().await.unwrap().unwrap();
    assert!(
        waiting.contains("a second Ctrl-C or SIGTERM stops now"),
        "{waiting}"
    );
    let started = std::time::Instant::now();
    send_signal(&child, libc::SIGINT);
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
            "aborted by a second signal (SIGINT (Ctrl-C)): the documents still in flight are \
             listed on stdout with \"may_exist\": true"
        ),
        "{rest}"
    );
    assert!(
        rest.contains("100 with \"may_exist\": true may have created their task"),
        "{rest}"
    );
    assert!(rest.contains("keep resuming without --dedupe"), "{rest}");
    let mut unanswered = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut unanswered)
        .await
        .unwrap();
    let unanswered = json_lines(&unanswered);
    assert_eq!(unanswered.len(), 100);
    assert!(
        unanswered
            .iter()
            .all(|line| line["may_exist"] == true && line["code"] == Value::Null),
        "{unanswered:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_counts_and_estimates_without_settings_or_sending() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let mut lines = document_lines(&documents(1500));
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
    let lines = document_lines(&documents(600));
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
        "\"may_exist\"",
        "SIGTERM",
        "--stop-after",
        "jq -c 'select(.may_exist == false)' failed.jsonl",
        "never add --dedupe mid-way",
        "about 1 hour",
        "up to 24 hours",
        "about 9 days for queue.yaml queues",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_like_ctrl_c_and_keeps_every_failure_already_decided() {
    let server = MockCloudTasks::start().await.unwrap();
    // Six calls: five refused at once, one answered after a while (still in flight at SIGTERM).
    for _ in 0..5 {
        server.push_fault(Fault::Reject(Code::PermissionDenied, "no actAs".into()));
    }
    server.push_fault(Fault::Delay(std::time::Duration::from_secs(2)));
    let dir = temp_dir();
    let lines = document_lines(&documents(6));
    let (mut child, stdin) = spawn_with_input(&server.host(), &dir, &["--per-task"], &lines).await;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Written and flushed as decided, while the run goes on.
    let refused = next_records(&mut stdout, 5).await;

    send_signal(&child, libc::SIGTERM);
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("SIGTERM ends the run once the call in flight is answered")
        .unwrap();
    drop(stdin);

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(143), "{err}");
    assert!(
        err.contains("1 created, 0 already enqueued, 5 failed"),
        "{err}"
    );
    assert!(
        err.contains("interrupted by SIGTERM: every document up to input line 6 is counted above"),
        "{err}"
    );
    assert!(
        err.contains(
            "to resume: { jq -c 'select(.may_exist == false)' failed.jsonl; tail -n +7 <this \
             run's input>; } | cloud-tasks enqueue-batch - > failed-2.jsonl"
        ),
        "{err}"
    );
    assert!(!err.contains("with --dedupe"), "{err}");
    assert_eq!(next_records(&mut stdout, 0).await.len(), 0);
    assert!(
        stdout.next_line().await.unwrap().is_none(),
        "no more records"
    );
    for record in &refused {
        assert_eq!(record["code"], "PERMISSION_DENIED", "{record}");
        assert_eq!(record["may_exist"], false, "{record}");
    }
    assert_eq!(server.tasks().len(), 1, "the call in flight was waited for");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_kill_loses_no_failure_already_decided() {
    let server = MockCloudTasks::start().await.unwrap();
    for _ in 0..5 {
        server.push_fault(Fault::Reject(Code::PermissionDenied, "no actAs".into()));
    }
    let dir = temp_dir();
    let docs = documents(5);
    let lines = document_lines(&docs);
    let (mut child, stdin) = spawn_with_input(&server.host(), &dir, &["--per-task"], &lines).await;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut records = next_records(&mut stdout, 5).await;

    send_signal(&child, libc::SIGKILL);
    let status = child.wait().await.unwrap();
    drop(stdin);

    assert_eq!(status.code(), None, "killed");
    assert!(
        stdout.next_line().await.unwrap().is_none(),
        "nothing half written"
    );
    records.sort_by_key(|record| record["line"].as_u64());
    for (record, (id, name)) in records.iter().zip(&docs) {
        assert_eq!(record["document_id"], id.to_string());
        assert_eq!(record["filename"], name.as_str());
        assert_eq!(record["may_exist"], false);
    }
    assert!(server.tasks().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unreadable_line_is_a_failure_record_and_the_run_goes_on() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let docs = documents(3);
    let mut input = b"\xEF\xBB\xBF".to_vec();
    input.extend(document_line(docs[0].0, &docs[0].1).as_bytes());
    input.extend(b"\n{\"document_id\": \"\xFF\", \"filename\": \"a.pdf\"}\n");
    input.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 1));
    input.extend(b"\n{not json\n");
    input.extend(b"{\"filename\": \"a.pdf\"}\n");
    input.extend(b"{\"document_id\": \"not-a-uuid\", \"filename\": \"a.pdf\"}\n");
    input.extend(b"[1, 2]\n");
    input.extend(document_line(docs[1].0, &docs[1].1).as_bytes());
    input.extend(b"\n\n");
    // The last line has no newline.
    input.extend(document_line(docs[2].0, &docs[2].1).as_bytes());
    let path = dir.join("docs.jsonl");
    std::fs::write(&path, input).unwrap();

    let output = run(&server, &dir, &[path.to_str().unwrap()], None).await;

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("3 created, 0 already enqueued, 6 failed"),
        "{err}"
    );
    assert!(
        err.contains("6 of them are input lines that hold no document"),
        "{err}"
    );
    let mut failed = stdout_lines(&output);
    failed.sort_by_key(|line| line["line"].as_u64());
    let expected = [
        (2, Value::Null, "not valid UTF-8 (at byte 18)"),
        (3, Value::Null, "longer than the limit of 1 MiB"),
        (
            4,
            Value::Null,
            "not JSON (key must be a string at column 2)",
        ),
        (5, Value::Null, "\"document_id\" is missing"),
        (
            6,
            "not-a-uuid".into(),
            "\"document_id\" \"not-a-uuid\" is not a UUID",
        ),
        (7, Value::Null, "not a JSON object"),
    ];
    assert_eq!(failed.len(), expected.len(), "{failed:?}");
    for (record, (line, document_id, problem)) in failed.iter().zip(expected) {
        assert_eq!(record["line"], line, "{record}");
        assert_eq!(record["document_id"], document_id, "{record}");
        assert_eq!(record["code"], Value::Null, "{record}");
        assert_eq!(record["may_exist"], false, "{record}");
        let error = record["error"].as_str().unwrap();
        assert!(error.contains(&format!("line {line} skipped: ")), "{error}");
        assert!(error.contains(problem), "{error}");
    }
    let mut stored: Vec<String> = server
        .tasks()
        .iter()
        .map(|task| match &task.message_type {
            Some(cloud_tasks::proto::MessageType::HttpRequest(http)) => {
                String::from_utf8(http.body.clone()).unwrap()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    stored.sort();
    let mut expected: Vec<String> = docs.iter().map(|(id, _)| id.to_string()).collect();
    expected.sort();
    assert_eq!(stored.len(), 3);
    for id in expected {
        assert!(
            stored.iter().any(|body| body.contains(&id)),
            "{id} (the line after the BOM too) is stored"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_keep_failing_before_sending_stop_the_run_early() {
    let dir = temp_dir();
    let lines = document_lines(&documents(300));
    let input = write_input(&dir, "docs.jsonl", &lines);
    // Nothing listens on this port: every call fails before sending, with the same cause.
    let output = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &unused_host())
        .current_dir(&dir)
        .args(["enqueue-batch", input.to_str().unwrap()])
        .args([
            "--concurrency",
            "1",
            "--timeout",
            "1s",
            "--stop-after",
            "500ms",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    // One batch of 100 failed; the other 200 documents were never read.
    assert!(
        err.contains("0 created, 0 already enqueued, 100 failed"),
        "{err}"
    );
    assert!(
        err.contains("stopped early: every call answered in the last "),
        "{err}"
    );
    assert!(
        err.contains("failed before anything was sent, with the same cause: "),
        "{err}"
    );
    assert!(
        err.contains("every document up to input line 100 is counted above; the rest of the input was not read"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "to resume: {{ jq -c 'select(.may_exist == false)' failed.jsonl; tail -n +101 {}; }}",
            input.display()
        )),
        "{err}"
    );
    let failed = stdout_lines(&output);
    assert_eq!(failed.len(), 100);
    assert!(
        failed.iter().all(|line| line["may_exist"] == false),
        "{failed:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_stops_the_run() {
    let server = MockCloudTasks::start().await.unwrap();
    // The first batch is refused: its failure lines cannot be written.
    server.push_fault(Fault::Reject(Code::PermissionDenied, "no actAs".into()));
    let dir = temp_dir();
    let lines = document_lines(&documents(300));
    let input = write_input(&dir, "docs.jsonl", &lines);
    let mut child = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host())
        .current_dir(&dir)
        .args([
            "enqueue-batch",
            input.to_str().unwrap(),
            "--concurrency",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());

    let output = child.wait_with_output().await.unwrap();

    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: cannot write the failed documents to stdout"),
        "{err}"
    );
    assert!(
        err.contains("those after stdout broke were not written"),
        "{err}"
    );
    // Reading stopped after the first batch, whose failures could not be recorded.
    assert_eq!(server.batch_create_tasks_calls().len(), 1);
    assert!(server.tasks().is_empty());
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
    let mut stored = stored_documents(&server);
    stored.sort_unstable();
    let mut expected: Vec<Uuid> = docs.iter().map(|(id, _)| *id).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected, "each document stored once");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The documents the server holds, one entry per stored task.
fn stored_documents(server: &MockCloudTasks) -> Vec<Uuid> {
    server
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
        .collect()
}

/// The fault: the server stores the first batch of 100, answers UNAVAILABLE and is gone
/// (later connections refused), as a server that crashed after committing. The stored 100
/// are reported `"may_exist": true` although their calls' last attempts sent nothing; every
/// `false` is a document not stored. Resuming exactly as the run advises, once the server is
/// back, stores every document once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_after_storing_reports_the_stored_as_may_exist_and_resuming_duplicates_none()
{
    let mut server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let docs = documents(300);
    let lines: Vec<String> = docs
        .iter()
        .map(|(id, name)| document_line(*id, name))
        .collect();
    let input = write_input(&dir, "docs.jsonl", &lines);
    server.push_fault(Fault::Vanish(
        Code::Unavailable,
        "crashed after committing".into(),
    ));

    let first = run(
        &server,
        &dir,
        &[
            input.to_str().unwrap(),
            "--concurrency",
            "1",
            "--timeout",
            "2s",
            "--stop-after",
            "500ms",
        ],
        None,
    )
    .await;

    let err = stderr(&first);
    assert_eq!(first.status.code(), Some(1), "{err}");
    let stored = stored_documents(&server);
    let first_batch: Vec<Uuid> = docs[..100].iter().map(|(id, _)| *id).collect();
    let mut sorted = stored.clone();
    sorted.sort_unstable();
    let mut expected = first_batch.clone();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "the first batch, stored once");
    let failed = stdout_lines(&first);
    let document_of =
        |line: &Value| -> Uuid { line["document_id"].as_str().unwrap().parse().unwrap() };
    let may_exist: Vec<Uuid> = failed
        .iter()
        .filter(|line| line["may_exist"] == true)
        .map(document_of)
        .collect();
    let mut reported = may_exist.clone();
    reported.sort_unstable();
    assert_eq!(reported, expected, "exactly the stored documents may exist");
    let safe_to_resend: Vec<&Value> = failed
        .iter()
        .filter(|line| line["may_exist"] == false)
        .collect();
    assert!(!safe_to_resend.is_empty(), "{err}");
    assert!(
        err.contains("jq -c 'select(.may_exist == false)' failed.jsonl"),
        "{err}"
    );

    // Resume as advised: the failures with "may_exist": false, then the input not read.
    server.restart().await.unwrap();
    let mut resume: Vec<String> = safe_to_resend.iter().map(|line| line.to_string()).collect();
    if let Some(rest) = err.split("tail -n +").nth(1) {
        let next: usize = rest.split(' ').next().unwrap().parse().unwrap();
        resume.extend(lines[next - 1..].iter().cloned());
    }
    let second = run(
        &server,
        &dir,
        &["-"],
        Some((resume.join("\n") + "\n").as_bytes()),
    )
    .await;

    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let mut stored = stored_documents(&server);
    stored.sort_unstable();
    let mut all: Vec<Uuid> = docs.iter().map(|(id, _)| *id).collect();
    all.sort_unstable();
    assert_eq!(stored, all, "every document stored exactly once");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The fault: the input stalls (stdin stays open) with a batch not full. After the linger its
/// 5 documents are sent anyway, without waiting for more input or its end; when the input then
/// ends, the run says all 5 were created, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_is_sent_when_the_input_pauses() {
    let server = MockCloudTasks::start().await.unwrap();
    let dir = temp_dir();
    let docs = documents(5);
    let (child, stdin) = spawn_with_input(
        &server.host(),
        &dir,
        &["--linger", "200ms"],
        &document_lines(&docs),
    )
    .await;
    wait_until(
        || server.tasks().len() == 5,
        "the partial batch was held while the input paused",
    )
    .await;
    assert_eq!(server.batch_create_tasks_calls().len(), 1);

    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(
        err.contains("5 created, 0 already enqueued, 0 failed"),
        "{err}"
    );
    let mut stored = stored_documents(&server);
    stored.sort_unstable();
    let mut expected: Vec<Uuid> = docs.iter().map(|(id, _)| *id).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected);
    std::fs::remove_dir_all(dir).unwrap();
}
