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
    each_delivery_shows_its_uploads_trace(&stdout, 4, 6);
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

/// Each document's enqueue line shows its upload's trace ID, and each of its deliveries (the
/// retried ones included) shows the same one: the task carried it through the emulator.
fn each_delivery_shows_its_uploads_trace(stdout: &str, documents: usize, deliveries: usize) {
    let trace_of = |line: &str| {
        let trace = line.split("trace ").nth(1)?.split_whitespace().next()?;
        (trace.len() == 32 && trace != "0".repeat(32)).then(|| trace.to_owned())
    };
    let enqueues: Vec<(&str, String)> = stdout
        .lines()
        .filter(|line| line.contains("-> task "))
        .map(|line| {
            let document = line.split_whitespace().next().unwrap();
            (
                document,
                trace_of(line).unwrap_or_else(|| panic!("no trace in {line:?}")),
            )
        })
        .collect();
    assert_eq!(enqueues.len(), documents, "{stdout}");
    let mut checked = 0;
    for line in stdout
        .lines()
        .filter(|line| line.contains("OIDC token verified  -> "))
    {
        let (_, trace) = enqueues
            .iter()
            .find(|(document, _)| line.contains(document))
            .unwrap_or_else(|| panic!("a delivery of no enqueued document: {line:?}"));
        assert_eq!(trace_of(line).as_ref(), Some(trace), "{line}");
        checked += 1;
    }
    assert_eq!(checked, deliveries, "{stdout}");
    let distinct: std::collections::HashSet<_> = enqueues.iter().map(|(_, t)| t).collect();
    assert_eq!(distinct.len(), documents, "one trace per upload: {stdout}");
}

/// What a stand-in OTLP/HTTP collector received: decoded trace and metric exports.
#[derive(Default)]
struct Collected {
    spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
    metric_names: std::collections::HashSet<String>,
}

/// A stand-in OTLP collector on 127.0.0.1 (`/v1/traces`, `/v1/metrics`, protobuf), as an
/// `OTEL_EXPORTER_OTLP_ENDPOINT` would name; answers each export with 200 and an empty message.
async fn collector() -> (String, std::sync::Arc<std::sync::Mutex<Collected>>) {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let collected = std::sync::Arc::new(std::sync::Mutex::new(Collected::default()));
    let traces = collected.clone();
    let metrics = collected.clone();
    let protobuf = || [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")];
    let router = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let spans = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|resource| resource.scope_spans)
                    .flat_map(|scope| scope.spans);
                traces.lock().unwrap().spans.extend(spans);
                (protobuf(), Vec::new())
            }),
        )
        .route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let request = ExportMetricsServiceRequest::decode(body).unwrap();
                let names = request
                    .resource_metrics
                    .into_iter()
                    .flat_map(|resource| resource.scope_metrics)
                    .flat_map(|scope| scope.metrics)
                    .map(|metric| metric.name);
                metrics.lock().unwrap().metric_names.extend(names);
                (protobuf(), Vec::new())
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (endpoint, collected)
}

/// Issue 18's "done when", end to end: `cloud-tasks demo` exporting to an OTLP collector shows
/// each upload's enqueue (its `send` span and the CreateTask attempt under it) and every
/// delivery's processing, the retried one included, linked to that enqueue; and the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exports_each_enqueue_linked_to_every_delivery_to_an_otlp_collector() {
    let (endpoint, collected) = collector().await;
    let output = tokio::task::spawn_blocking(move || {
        cloud_tasks(
            &["demo", "--documents", "3", "--fail-first-attempts", "1"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let collected = collected.lock().unwrap();
    let named = |name: &str| -> Vec<_> {
        collected
            .spans
            .iter()
            .filter(|span| span.name == name)
            .collect()
    };
    let uploads = named("upload");
    let sends = named("send document-processing");
    let processes = named("process document-processing");
    assert_eq!(uploads.len(), 3, "{:#?}", collected.spans);
    assert_eq!(sends.len(), 3);
    assert_eq!(processes.len(), 4, "3 documents, one delivered twice");
    for send in &sends {
        assert!(
            uploads
                .iter()
                .any(|upload| upload.trace_id == send.trace_id),
            "the enqueue is in its upload's trace"
        );
        assert!(
            collected
                .spans
                .iter()
                .any(|attempt| attempt.parent_span_id == send.span_id),
            "the CreateTask attempt under the enqueue"
        );
    }
    let mut deliveries_per_send = vec![0; sends.len()];
    for process in &processes {
        assert_eq!(process.links.len(), 1, "{process:#?}");
        let link = &process.links[0];
        let send = sends
            .iter()
            .position(|send| send.trace_id == link.trace_id && send.span_id == link.span_id)
            .unwrap_or_else(|| panic!("a delivery linked to no enqueue: {process:#?}"));
        deliveries_per_send[send] += 1;
    }
    deliveries_per_send.sort_unstable();
    assert_eq!(
        deliveries_per_send,
        [1, 1, 2],
        "the retried document's two deliveries"
    );
    for metric in [
        "gcp.client.request.duration",
        "messaging.client.sent.messages",
        "messaging.process.duration",
    ] {
        assert!(
            collected.metric_names.contains(metric),
            "{metric} in {:?}",
            collected.metric_names
        );
    }
}
