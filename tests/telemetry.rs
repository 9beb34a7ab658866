//! What the crate reports to OpenTelemetry: spans (names, kinds, attributes, parents, links),
//! the trace context each task carries, and metrics, read back from the SDK's in-memory
//! exporters. The last test runs the whole path through the emulator and a front end that
//! rewrites `traceparent`, as Google's do.
//!
//! Each test installs its own tracer for its thread (`#[tokio::test]` runs everything on one);
//! the meter provider is global, installed once for the binary before any instrument is made,
//! so each test reads only the points of its own queue or server port.

#[path = "../examples/backend/app.rs"]
mod app;
mod common;
#[path = "common/emulator.rs"]
mod emulator;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use cloud_tasks::proto::{MessageType, Task};
use cloud_tasks::receiver::{CloudTask, OidcVerifier, TaskOutcome};
use cloud_tasks::telemetry::{ENQUEUE_TRACEPARENT_HEADER, TRACEPARENT_HEADER};
use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{
    BatchOptions, CallOptions, CloudTasksClient, Code, DocumentTask, ProcessDocumentPayload,
    RetryPolicy, Uuid,
};
use emulator::{Emulator, LocalServer};
use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;

const CREATE_TASK: &str = "google.cloud.tasks.v2.CloudTasks/CreateTask";
const BATCH_CREATE_TASKS: &str = "google.cloud.tasks.v2.CloudTasks/BatchCreateTasks";
const WAIT: Duration = Duration::from_secs(15);

/// Spans of this thread, exported as they end.
struct Traces {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

fn traces() -> Traces {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("telemetry-test")));
    Traces {
        exporter,
        _provider: provider,
        _guard: common::subscriber::set_default(subscriber),
    }
}

impl Traces {
    fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }

    fn named(&self, name: &str) -> Vec<SpanData> {
        let mut spans: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|span| span.name == name)
            .collect();
        spans.sort_by_key(|span| span.start_time);
        spans
    }
}

/// The binary's meter provider, installed before the first instrument is made.
fn metrics() -> &'static (SdkMeterProvider, InMemoryMetricExporter) {
    static METRICS: OnceLock<(SdkMeterProvider, InMemoryMetricExporter)> = OnceLock::new();
    METRICS.get_or_init(|| {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        (provider, exporter)
    })
}

/// One data point: its attributes and its value (a histogram's count).
#[derive(Debug)]
struct Point {
    attributes: Vec<KeyValue>,
    value: f64,
}

impl Point {
    fn get(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    fn has(&self, key: &str, value: impl Into<Value>) -> bool {
        self.get(key) == Some(&value.into())
    }
}

/// The cumulative points of metric `name` now.
fn points(name: &str) -> Vec<Point> {
    let (provider, exporter) = metrics();
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    // Nothing recorded yet in this binary: nothing exported.
    let Some(latest) = exported.last() else {
        return Vec::new();
    };
    let mut points = Vec::new();
    for scope in latest.scope_metrics() {
        for metric in scope.metrics().filter(|metric| metric.name() == name) {
            match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    points.extend(histogram.data_points().map(|point| Point {
                        attributes: point.attributes().cloned().collect(),
                        value: point.count() as f64,
                    }));
                }
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    points.extend(sum.data_points().map(|point| Point {
                        attributes: point.attributes().cloned().collect(),
                        value: point.value() as f64,
                    }));
                }
                AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
                    points.extend(gauge.data_points().map(|point| Point {
                        attributes: point.attributes().cloned().collect(),
                        value: point.value(),
                    }));
                }
                other => panic!("unexpected data for {name}: {other:?}"),
            }
        }
    }
    points
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn has(span: &SpanData, key: &str, value: impl Into<Value>) -> bool {
    attribute(span, key) == Some(&value.into())
}

fn header<'a>(task: &'a Task, name: &str) -> Option<&'a str> {
    match &task.message_type {
        Some(MessageType::HttpRequest(request)) => request.headers.get(name).map(String::as_str),
        _ => None,
    }
}

fn traceparent_of(span: &SpanData) -> String {
    format!(
        "00-{}-{}-01",
        span.span_context.trace_id(),
        span.span_context.span_id()
    )
}

async fn mock_and_client(queue: &str) -> (MockCloudTasks, CloudTasksClient) {
    let server = MockCloudTasks::start().await.unwrap();
    let client = common::builder()
        .with_queue(queue)
        .with_emulator_host(server.host())
        .build()
        .unwrap();
    (server, client)
}

fn fast_retries() -> CallOptions {
    CallOptions::new().with_retry_policy(
        RetryPolicy::default()
            .with_initial_backoff(Duration::from_millis(1))
            .with_max_backoff(Duration::from_millis(1)),
    )
}

/// Fault: the first attempt is refused with UNAVAILABLE. The call's `send` span holds both
/// attempts' spans; the failed one says why, the resend says it is one; the task carries the
/// send span's context in both headers; the metrics count each attempt, the retry and the
/// created task.
#[tokio::test]
async fn an_enqueue_is_one_send_span_over_its_attempts_and_the_task_carries_it() {
    metrics();
    let traces = traces();
    let (server, client) = mock_and_client("telemetry-single").await;
    let port = i64::from(server.addr().port());
    server.push_fault(Fault::Reject(Code::Unavailable, "try again".into()));
    let document = Uuid::new_v4();

    let enqueued = client
        .enqueue(
            DocumentTask::new(document, "a.pdf").deduplicated(),
            &fast_retries(),
        )
        .await
        .unwrap();

    let sends = traces.named("send telemetry-single");
    assert_eq!(sends.len(), 1, "{:#?}", traces.spans());
    let send = &sends[0];
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert!(has(send, "messaging.system", "gcp_cloud_tasks"));
    assert!(has(send, "messaging.operation.name", "send"));
    assert!(has(
        send,
        "messaging.destination.name",
        client.queue_path().to_owned()
    ));
    assert!(has(
        send,
        "messaging.message.id",
        enqueued.task_name().to_owned()
    ));
    assert!(has(send, "rpc.system.name", "grpc"));
    assert!(has(send, "rpc.method", CREATE_TASK));
    assert!(has(send, "server.address", "127.0.0.1"));
    assert!(has(send, "server.port", port), "{:?}", send.attributes);
    assert!(has(send, "cloud_tasks.document_id", document.to_string()));
    assert_eq!(attribute(send, "error.type"), None);

    let attempts = traces.named(CREATE_TASK);
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.span_kind, SpanKind::Client);
        assert_eq!(attempt.parent_span_id, send.span_context.span_id());
        assert_eq!(
            attempt.span_context.trace_id(),
            send.span_context.trace_id()
        );
        assert!(has(attempt, "server.port", port));
    }
    assert!(has(&attempts[0], "error.type", "UNAVAILABLE"));
    assert!(has(&attempts[0], "rpc.response.status_code", "UNAVAILABLE"));
    assert_eq!(attribute(&attempts[0], "http.request.resend_count"), None);
    assert!(has(&attempts[1], "http.request.resend_count", 1_i64));
    assert_eq!(attribute(&attempts[1], "error.type"), None);

    let stored = server.tasks();
    assert_eq!(stored.len(), 1);
    let expected = traceparent_of(send);
    assert_eq!(
        header(&stored[0], ENQUEUE_TRACEPARENT_HEADER),
        Some(expected.as_str())
    );
    assert_eq!(
        header(&stored[0], TRACEPARENT_HEADER),
        Some(expected.as_str())
    );

    let mine = |point: &Point| point.has("server.port", port);
    let attempt_points: Vec<_> = points("gcp.client.attempt.duration")
        .into_iter()
        .filter(mine)
        .collect();
    assert_eq!(attempt_points.len(), 2, "{attempt_points:#?}");
    assert!(attempt_points.iter().any(|p| p.value == 1.0
        && p.has("error.type", "UNAVAILABLE")
        && p.has("rpc.method", CREATE_TASK)));
    assert!(
        attempt_points
            .iter()
            .any(|p| p.value == 1.0 && p.get("error.type").is_none())
    );
    let calls: Vec<_> = points("gcp.client.request.duration")
        .into_iter()
        .filter(mine)
        .collect();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0].value, 1.0);
    assert!(calls[0].get("error.type").is_none());
    let retries: Vec<_> = points("gcp_cloud_tasks.client.retries")
        .into_iter()
        .filter(|p| p.has("rpc.method", CREATE_TASK) && p.has("error.type", "UNAVAILABLE"))
        .collect();
    assert_eq!(retries.len(), 1, "{retries:#?}");
    assert_eq!(retries[0].value, 1.0);
    let sent: Vec<_> = points("messaging.client.sent.messages")
        .into_iter()
        .filter(|p| p.has("messaging.destination.name", client.queue_path().to_owned()))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(sent[0].has("messaging.gcp_cloud_tasks.outcome", "created"));
    assert_eq!(sent[0].value, 1.0);
}

/// A failed enqueue: the span and the counters carry the code.
#[tokio::test]
async fn a_failed_enqueue_is_counted_by_code() {
    metrics();
    let traces = traces();
    let (server, client) = mock_and_client("telemetry-failed").await;
    server.push_fault(Fault::Reject(Code::PermissionDenied, "no".into()));

    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));

    let send = &traces.named("send telemetry-failed")[0];
    assert!(has(send, "error.type", "PERMISSION_DENIED"));
    assert!(has(send, "rpc.response.status_code", "PERMISSION_DENIED"));
    let sent: Vec<_> = points("messaging.client.sent.messages")
        .into_iter()
        .filter(|p| p.has("messaging.destination.name", client.queue_path().to_owned()))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert!(sent[0].has("messaging.gcp_cloud_tasks.outcome", "failed"));
    assert!(sent[0].has("rpc.response.status_code", "PERMISSION_DENIED"));
    assert_eq!(sent[0].value, 1.0);
    assert!(server.tasks().is_empty());
}

/// A batch: one `create` span per document, each task carrying its own; the batch's `send`
/// span links to every one of them.
#[tokio::test]
async fn a_batch_links_its_send_span_to_each_documents_create_span() {
    metrics();
    let traces = traces();
    let (server, client) = mock_and_client("telemetry-batch").await;
    let documents: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();

    let outcomes = client
        .enqueue_all(
            documents.iter().map(|id| DocumentTask::new(*id, "b.pdf")),
            BatchOptions::new(),
        )
        .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    let creates = traces.named("create telemetry-batch");
    assert_eq!(creates.len(), 3, "{:#?}", traces.spans());
    let sends = traces.named("send telemetry-batch");
    assert_eq!(sends.len(), 1);
    let send = &sends[0];
    assert!(has(send, "rpc.method", BATCH_CREATE_TASKS));
    assert!(has(send, "messaging.batch.message_count", 3_i64));
    let linked: Vec<(TraceId, SpanId)> = send
        .links
        .iter()
        .map(|link| (link.span_context.trace_id(), link.span_context.span_id()))
        .collect();
    let stored = server.tasks();
    assert_eq!(stored.len(), 3);
    for document in &documents {
        let create = creates
            .iter()
            .find(|span| has(span, "cloud_tasks.document_id", document.to_string()))
            .expect("a create span per document");
        assert_eq!(create.span_kind, SpanKind::Producer);
        let id = (
            create.span_context.trace_id(),
            create.span_context.span_id(),
        );
        assert!(linked.contains(&id), "{linked:?} lacks {id:?}");
        let task = stored
            .iter()
            .find(|task| match &task.message_type {
                Some(MessageType::HttpRequest(request)) => {
                    String::from_utf8_lossy(&request.body).contains(&document.to_string())
                }
                _ => false,
            })
            .unwrap();
        assert_eq!(
            header(task, ENQUEUE_TRACEPARENT_HEADER),
            Some(traceparent_of(create).as_str())
        );
    }
    let sent: Vec<_> = points("messaging.client.sent.messages")
        .into_iter()
        .filter(|p| p.has("messaging.destination.name", client.queue_path().to_owned()))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!(sent[0].value, 3.0);
}

/// The processor of the end-to-end test: asks for a retry of each document's first delivery.
struct RetryFirst;

impl app::Processor for RetryFirst {
    async fn process(&self, task: &CloudTask<ProcessDocumentPayload>) -> TaskOutcome {
        if task.context.is_retry() {
            TaskOutcome::Done
        } else {
            TaskOutcome::retry_later()
        }
    }
}

/// Google's front end in miniature: replaces the parent span ID of every incoming
/// `traceparent` with one of its own, keeping the trace ID.
async fn rewrite_traceparent(rewritten: Arc<AtomicUsize>, mut request: Request) -> Request {
    let headers = request.headers_mut();
    if let Some(value) = headers.get(TRACEPARENT_HEADER).cloned() {
        let value = value.to_str().unwrap();
        let front_end = format!("{}-{}-{}", &value[..35], "f0f0f0f0f0f0f0f0", &value[53..]);
        assert_ne!(value, front_end);
        headers.insert(TRACEPARENT_HEADER, front_end.parse().unwrap());
        rewritten.fetch_add(1, Ordering::SeqCst);
    }
    request
}

/// End to end through the emulator and a rewriting front end: every delivery of each
/// document (the retried one too) is a `process` span linked to that document's enqueue span,
/// with its retry count and outcome, and the processing metrics count both outcomes.
#[tokio::test]
async fn each_delivery_links_to_its_documents_enqueue_through_a_rewriting_front_end() {
    metrics();
    let traces = traces();
    let queue = "telemetry-e2e";
    let handler = LocalServer::bind().await;
    let (emulator, client) = Emulator::start(queue, &handler.url()).await;
    let (answered, mut answers) = mpsc::unbounded_channel();
    let rewritten = Arc::new(AtomicUsize::new(0));
    let front_end = rewritten.clone();
    let router = app::router(app::App {
        client: client.clone(),
        verifier: OidcVerifier::builder(client.target().service_url(), emulator::SERVICE_ACCOUNT)
            .with_issuer(&emulator.issuer)
            .build()
            .unwrap(),
        processor: Arc::new(RetryFirst),
        documents: app::Documents::default(),
    })
    // Runs once the handler returned, so its delivery's span has ended.
    .layer(axum::middleware::map_response(move |response: Response| {
        if response.extensions().get::<TaskOutcome>().is_some() {
            answered.send(()).ok();
        }
        std::future::ready(response)
    }))
    .layer(axum::middleware::map_request(move |request: Request| {
        rewrite_traceparent(front_end.clone(), request)
    }));
    handler.serve(router);

    let documents: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
    for document in &documents {
        client
            .create_document_processing_task(*document, "e2e.pdf")
            .await
            .unwrap();
    }
    for _ in 0..documents.len() * 2 {
        tokio::time::timeout(WAIT, answers.recv())
            .await
            .expect("every delivery answered in time")
            .unwrap();
    }
    let processes = traces.named("process telemetry-e2e");
    assert_eq!(processes.len(), documents.len() * 2, "{processes:#?}");
    assert_eq!(rewritten.load(Ordering::SeqCst), documents.len() * 2);

    let sends = traces.named("send telemetry-e2e");
    assert_eq!(sends.len(), documents.len());
    for document in &documents {
        let send = sends
            .iter()
            .find(|span| has(span, "cloud_tasks.document_id", document.to_string()))
            .unwrap();
        let task_id = match attribute(send, "messaging.message.id") {
            Some(Value::String(name)) => name.as_str().rsplit('/').next().unwrap().to_owned(),
            other => panic!("send span without a task name: {other:?}"),
        };
        let mut mine: Vec<_> = processes
            .iter()
            .filter(|span| has(span, "messaging.message.id", task_id.clone()))
            .collect();
        mine.sort_by_key(|span| span.start_time);
        assert_eq!(mine.len(), 2, "two deliveries of {task_id}");
        for (retry_count, process) in mine.iter().enumerate() {
            assert_eq!(process.span_kind, SpanKind::Consumer);
            assert!(has(process, "messaging.system", "gcp_cloud_tasks"));
            assert!(has(process, "messaging.destination.name", queue));
            assert!(has(
                process,
                "messaging.gcp_cloud_tasks.task.retry_count",
                retry_count as i64
            ));
            let links: Vec<_> = process.links.iter().collect();
            assert_eq!(links.len(), 1, "{links:?}");
            assert_eq!(
                links[0].span_context.trace_id(),
                send.span_context.trace_id()
            );
            assert_eq!(
                links[0].span_context.span_id(),
                send.span_context.span_id(),
                "linked to the enqueue span, not the front end's"
            );
            assert_ne!(
                process.parent_span_id,
                send.span_context.span_id(),
                "linked, not parented"
            );
        }
        assert!(has(
            mine[0],
            "messaging.gcp_cloud_tasks.outcome",
            "retry_later"
        ));
        assert!(has(mine[1], "messaging.gcp_cloud_tasks.outcome", "done"));
    }

    let processed: Vec<_> = points("messaging.process.duration")
        .into_iter()
        .filter(|p| p.has("messaging.destination.name", queue))
        .collect();
    let count = |outcome: &str| {
        processed
            .iter()
            .filter(|p| p.has("messaging.gcp_cloud_tasks.outcome", outcome.to_owned()))
            .map(|p| p.value)
            .sum::<f64>()
    };
    assert_eq!(
        count("retry_later"),
        documents.len() as f64,
        "{processed:#?}"
    );
    assert_eq!(count("done"), documents.len() as f64, "{processed:#?}");
}

/// `cloud-tasks enqueue` of one new document, run with `TRACEPARENT` set to `traceparent`.
async fn enqueue_one_with_traceparent(
    server: &MockCloudTasks,
    traceparent: &str,
) -> std::process::Output {
    common::cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host())
        .env("TRACEPARENT", traceparent)
        .args([
            "enqueue",
            "--document-id",
            &Uuid::new_v4().to_string(),
            "--filename",
            "one.pdf",
        ])
        .output()
        .await
        .unwrap()
}

/// A backfill started by a job with `TRACEPARENT`: every task it enqueues, alone or in a
/// batch, carries the job's trace.
#[tokio::test]
async fn the_cli_continues_the_jobs_trace_from_traceparent() {
    let job_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (server, _client) = mock_and_client(common::QUEUE).await;
    let enqueue =
        enqueue_one_with_traceparent(&server, &format!("00-{job_trace}-00f067aa0ba902b7-01")).await;
    assert!(enqueue.status.success(), "{enqueue:?}");
    let lines: String = (0..3)
        .map(|_| {
            format!(
                "{{\"document_id\": \"{}\", \"filename\": \"b.pdf\"}}\n",
                Uuid::new_v4()
            )
        })
        .collect();
    let mut batch = common::cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host());
    batch
        .env("TRACEPARENT", format!("00-{job_trace}-00f067aa0ba902b7-01"))
        .args(["enqueue-batch", "-"]);
    let batch = common::output_with_stdin(batch, Some(lines.as_bytes())).await;
    assert!(batch.status.success(), "{batch:?}");

    let tasks = server.tasks();
    assert_eq!(tasks.len(), 4);
    for task in &tasks {
        for name in [ENQUEUE_TRACEPARENT_HEADER, TRACEPARENT_HEADER] {
            let traceparent = header(task, name).unwrap_or_else(|| panic!("{name} in {task:?}"));
            assert_eq!(&traceparent[3..35], job_trace, "{traceparent}");
        }
    }
}

/// A `TRACEPARENT` that is not W3C's is reported, not silently ignored.
#[tokio::test]
async fn the_cli_warns_about_a_malformed_traceparent() {
    let (server, _client) = mock_and_client(common::QUEUE).await;
    let output = enqueue_one_with_traceparent(&server, "not-a-trace").await;
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("TRACEPARENT=\"not-a-trace\" is not a W3C traceparent"),
        "{stderr}"
    );
    // The command still runs, in a trace of its own.
    assert_eq!(server.tasks().len(), 1);
}

/// Deliveries refused before processing are counted, by reason, whether the axum extractor or
/// `receive` refused them: without that, a front end that breaks every token (issue 16's
/// Cloud Run case) shows as no traffic at all. The faults: no token at all (401, check
/// `token`), and a token that is not a JWT (401, check `format`).
#[tokio::test]
async fn refused_deliveries_are_counted_by_reason() {
    const REJECTED: &str = "gcp_cloud_tasks.receiver.rejected_deliveries";
    metrics();
    let refused = |check: &str| {
        points(REJECTED)
            .iter()
            .filter(|p| {
                p.has("error.type", "token")
                    && p.has("gcp_cloud_tasks.receiver.check", check.to_owned())
                    && p.has("http.response.status_code", 401_i64)
                    && p.has("messaging.system", "gcp_cloud_tasks")
            })
            .map(|p| p.value)
            .sum::<f64>()
    };
    let (no_token_before, malformed_before) = (refused("token"), refused("format"));
    let verifier = OidcVerifier::builder(common::SERVICE_URL, common::SERVICE_ACCOUNT)
        .build()
        .unwrap();

    let router = axum::Router::new()
        .route(
            "/tasks",
            axum::routing::post(|_: CloudTask<ProcessDocumentPayload>| async { "processed" }),
        )
        .with_state(verifier.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"POST /tasks HTTP/1.1\r\nHost: backend\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("Bearer not-a-jwt"),
    );
    let rejection =
        cloud_tasks::receiver::receive::<ProcessDocumentPayload>(&verifier, &headers, b"{}")
            .await
            .unwrap_err();
    assert_eq!(rejection.status_code(), 401);

    assert_eq!(refused("token") - no_token_before, 1.0, "by the extractor");
    assert_eq!(refused("format") - malformed_before, 1.0, "by receive");
}
