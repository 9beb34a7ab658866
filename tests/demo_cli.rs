//! The `cloud-tasks demo` and `cloud-tasks emulator` commands as a user runs them: outcome,
//! output and exit codes. Each runs in an empty directory, so no `.env` file leaks in.

use std::process::{Command, Output};

fn cloud_tasks(args: &[&str], env: &[(&str, &str)]) -> Output {
    let directory = std::env::temp_dir().join(format!("cloud-tasks-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&directory).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_cloud-tasks"));
    command.args(args).current_dir(&directory);
    for name in [
        "GCP_PROJECT_ID",
        "GCP_LOCATION",
        "CLOUD_TASKS_QUEUE",
        "CLOUD_RUN_SERVICE_URL",
        "CLOUD_RUN_SERVICE_ACCOUNT",
        "CLOUD_TASKS_EMULATOR_HOST",
        "LISTEN_ADDR",
        "QUEUES",
        "OIDC_ISSUER",
        "RUST_LOG",
        "CLOUD_TASKS_OIDC_ISSUER",
        "CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN",
        "K_SERVICE",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    std::fs::remove_dir(&directory).ok();
    output
}

#[test]
fn demo_processes_every_document_and_exits_0() {
    let output = cloud_tasks(
        &["demo", "--documents", "4", "--fail-first-attempts", "2"],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("projects/local-dev/locations/us-central1/queues/document-processing"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("-> 200 processed").count(), 4, "{stdout}");
    assert_eq!(
        stdout.matches("-> 503 simulated failure").count(),
        2,
        "{stdout}"
    );
    assert_eq!(stdout.matches("retry 1 (after 503)").count(), 2, "{stdout}");
    assert_eq!(
        stdout.matches("OIDC token verified  -> ").count(),
        6,
        "{stdout}"
    );
    assert!(
        stdout.contains("OK: 4 of 4 documents processed"),
        "{stdout}"
    );
    assert!(stdout.contains("6 deliveries (2 retried)"), "{stdout}");
    // The emulator's own lines ("<task> <url>: 503") are kept out of the demo's output.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains("/api/tasks/process-document: "),
            "{output}"
        );
    }
}

#[test]
fn demo_routes_the_emulators_log_through_tracing() {
    let output = cloud_tasks(
        &["demo", "--documents", "1", "--fail-first-attempts", "1"],
        &[("RUST_LOG", "cloud_tasks_emulator=info")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("/api/tasks/process-document: "),
        "{stdout}"
    );
    let attempts: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("cloud_tasks_emulator"))
        .filter(|line| line.contains("/api/tasks/process-document: "))
        .collect();
    assert_eq!(attempts.len(), 2, "one log line per attempt: {stderr}");
    assert!(attempts[0].ends_with(": 503"), "{stderr}");
    assert!(attempts[1].ends_with(": 200"), "{stderr}");
}

#[test]
fn demo_uses_the_queue_from_the_settings() {
    let output = cloud_tasks(
        &["demo", "--documents", "1", "--fail-first-attempts", "0"],
        &[
            ("GCP_PROJECT_ID", "my-project"),
            ("GCP_LOCATION", "europe-west1"),
            ("CLOUD_TASKS_QUEUE", "docs-queue"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("queue     projects/my-project/locations/europe-west1/queues/docs-queue"),
        "{stdout}"
    );
}

#[test]
fn demo_with_bad_settings_exits_2() {
    let output = cloud_tasks(&["demo"], &[("CLOUD_TASKS_QUEUE", "bad/queue")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CLOUD_TASKS_QUEUE"), "{stderr}");
}

#[test]
fn emulator_rejects_an_issuer_that_is_not_an_origin() {
    let output = cloud_tasks(
        &[
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            "http://127.0.0.1:8123/path",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bare http or https origin"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no exports for an emulator that did not start"
    );
}

#[test]
fn emulator_rejects_a_short_queue_name() {
    let output = cloud_tasks(
        &[
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--queues",
            "document-processing",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a full queue name"), "{stderr}");
}
