//! `cloud-tasks demo`: the whole pipeline on this machine, with nothing installed or configured.
//!
//! The crates.io `cloud-tasks-emulator` runs as a child process (`cloud-tasks emulator`), so that
//! its own log lines, which it prints to stderr, never land in the middle of the demo's output:
//! they are passed to `tracing` instead (`RUST_LOG=cloud_tasks_emulator=info` shows them). The
//! example backend's routes
//! (`examples/backend/app.rs`, included below) run as the Cloud Run stand-in; sample documents
//! go through `CloudTasksClient::create_document_processing_task`, the production code path with
//! only the endpoint changed. Each delivery is checked by the real `receiver` code (OIDC token
//! against the emulator's JWKS, headers, JSON body) before it is shown.

#[path = "../../examples/backend/app.rs"]
mod app;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::Response;
use cloud_tasks::receiver::{CloudTask, Delivery, OidcVerifier, Rejection, TaskOutcome};
use cloud_tasks::{
    CloudTasksClient, EMULATOR_HOST_VAR, ProcessDocumentPayload, Settings, Target, Uuid,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::{EXIT_FAILED, EXIT_USAGE};

/// Used when the settings leave them empty: the emulator checks neither.
pub(super) const LOCAL_PROJECT: &str = "local-dev";
pub(super) const LOCAL_SERVICE_ACCOUNT: &str = "tasks-invoker@local-dev.iam.gserviceaccount.com";

const SAMPLE_FILENAMES: [&str; 5] = [
    "quarterly-report.pdf",
    "invoice-2026-0042.pdf",
    "résumé – Zoë.docx",
    "scan_0001.png",
    "contract (signed).pdf",
];

#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {
    /// How many sample documents to enqueue.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=500))]
    documents: u16,
    /// How many of them answer 503 (retry later) on their first attempt, to show Cloud Tasks
    /// retrying.
    #[arg(long, default_value_t = 1)]
    fail_first_attempts: u16,
    /// Give up (exit 1) if not every document is processed within this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

/// What the handler reports to the demo's output loop.
enum Event {
    Delivered {
        delivery: Box<Delivery<ProcessDocumentPayload>>,
        simulated_failure: bool,
    },
    Rejected(String),
}

/// Processing for the demo: report the verified delivery, and ask for a retry on the first
/// attempt of the chosen documents.
struct DemoProcessor {
    events: mpsc::UnboundedSender<Event>,
    fail_first: HashSet<Uuid>,
}

impl app::Processor for DemoProcessor {
    async fn process(&self, task: &CloudTask<ProcessDocumentPayload>) -> TaskOutcome {
        let simulated_failure =
            !task.context.is_retry() && self.fail_first.contains(&task.payload.document_id);
        self.events
            .send(Event::Delivered {
                delivery: Box::new(task.0.clone()),
                simulated_failure,
            })
            .ok();
        if simulated_failure {
            TaskOutcome::retry_later()
        } else {
            TaskOutcome::Done
        }
    }
}

pub(super) async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("\nFAILED: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

enum Failure {
    Usage(String),
    Failed(String),
}

impl From<cloud_tasks::Error> for Failure {
    fn from(error: cloud_tasks::Error) -> Self {
        if error.is_config() {
            Self::Usage(error.to_string())
        } else {
            Self::Failed(error.to_string())
        }
    }
}

async fn bind_loopback() -> Result<(TcpListener, SocketAddr), Failure> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| Failure::Failed(format!("cannot listen on 127.0.0.1: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| Failure::Failed(error.to_string()))?;
    Ok((listener, address))
}

async fn demo(args: DemoArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let settings = Settings::from_env().map_err(|error| Failure::Usage(error.to_string()))?;
    let (handler_listener, handler_address) = bind_loopback().await?;
    let service_account = non_empty_or(&settings.cloud_run_service_account, LOCAL_SERVICE_ACCOUNT);
    let queue = Target::new(
        non_empty_or(&settings.gcp_project_id, LOCAL_PROJECT),
        &settings.gcp_location,
        &settings.cloud_tasks_queue,
        &format!("http://{handler_address}"),
        service_account,
    )
    .map_err(|error| Failure::Usage(error.to_string()))?
    .queue_path()
    .to_owned();
    let (mut emulator, emulator_address) = start_emulator(&queue, deadline).await?;
    let issuer = format!("http://{emulator_address}");

    // The production client; only the endpoint is the emulator's.
    let client = CloudTasksClient::builder()
        .with_project_id(non_empty_or(&settings.gcp_project_id, LOCAL_PROJECT))
        .with_location(&settings.gcp_location)
        .with_queue(&settings.cloud_tasks_queue)
        .with_service_url(format!("http://{handler_address}"))
        .with_service_account_email(service_account)
        .with_emulator_host(emulator_address.to_string())
        .build()?;

    let documents: Vec<ProcessDocumentPayload> = (0..usize::from(args.documents))
        .map(|index| ProcessDocumentPayload {
            document_id: Uuid::new_v4(),
            filename: sample_filename(index),
        })
        .collect();
    let (events, mut received) = mpsc::unbounded_channel();
    let rejections = events.clone();
    let processor = DemoProcessor {
        events,
        fail_first: documents
            .iter()
            .take(usize::from(args.fail_first_attempts))
            .map(|document| document.document_id)
            .collect(),
    };
    let verifier = OidcVerifier::builder(client.target().service_url(), service_account)
        .with_issuer(&issuer)
        .build()
        .map_err(|error| Failure::Usage(error.to_string()))?;
    let handler = app::router(app::App {
        client: client.clone(),
        verifier,
        processor: Arc::new(processor),
        documents: app::Documents::default(),
    })
    // The extractor answers refused requests itself; the demo stops at the first.
    .layer(axum::middleware::map_response(move |response: Response| {
        if let Some(rejection) = response.extensions().get::<Rejection>() {
            rejections.send(Event::Rejected(rejection.to_string())).ok();
        }
        std::future::ready(response)
    }));
    tokio::spawn(async move { axum::serve(handler_listener, handler).await });

    println!("cloud-tasks demo: Cloud Tasks emulator, local handler, OIDC verification\n");
    println!(
        "  emulator  {emulator_address} (cloud-tasks-emulator; RUST_LOG=cloud_tasks_emulator=info shows its log)"
    );
    println!("  queue     {queue}");
    println!(
        "  handler   http://{handler_address}{}",
        cloud_tasks::PROCESS_DOCUMENT_PATH
    );
    println!(
        "  tokens    issuer {issuer}, audience http://{handler_address}, email {service_account}"
    );
    println!();
    println!(
        "Enqueuing {} documents with CloudTasksClient:",
        documents.len()
    );
    for document in &documents {
        let enqueued = tokio::time::timeout_at(
            deadline.into(),
            client.create_document_processing_task(document.document_id, &document.filename),
        )
        .await
        .map_err(|_| {
            Failure::Failed(format!(
                "enqueuing did not finish within {} s",
                args.timeout
            ))
        })??;
        println!(
            "  {}  {:<24} -> task {}",
            document.document_id,
            quoted(&document.filename),
            short_task(enqueued.task_name())
        );
    }
    println!();
    println!("Deliveries (each token verified against the emulator's JWKS):");

    let tally = watch_deliveries(&documents, &mut received, &mut emulator, deadline).await?;
    wait_idle(&emulator_address, &queue, deadline).await?;

    println!();
    println!(
        "OK: {n} of {n} documents processed in {:.2} s; {} deliveries ({} retried), \
         every OIDC token verified (RS256 signature, iss, aud, exp, email); queue empty.",
        started.elapsed().as_secs_f64(),
        tally.deliveries,
        tally.retries,
        n = documents.len(),
    );
    Ok(())
}

struct Tally {
    deliveries: usize,
    retries: usize,
}

/// Prints each delivery as the handler reports it, until every document is processed.
///
/// Fails at the first refused delivery (the handler's checks are what the demo shows), when the
/// emulator stops, or at `deadline`, naming the documents still missing.
async fn watch_deliveries(
    documents: &[ProcessDocumentPayload],
    received: &mut mpsc::UnboundedReceiver<Event>,
    emulator: &mut EmulatorProcess,
    deadline: Instant,
) -> Result<Tally, Failure> {
    let mut processed = HashSet::new();
    let mut tally = Tally {
        deliveries: 0,
        retries: 0,
    };
    while processed.len() < documents.len() {
        let event = tokio::select! {
            event = received.recv() => event,
            () = tokio::time::sleep_until(deadline.into()) => {
                let missing: Vec<String> = documents
                    .iter()
                    .filter(|document| !processed.contains(&document.document_id))
                    .map(|document| document.document_id.to_string())
                    .collect();
                return Err(Failure::Failed(format!(
                    "{} of {} documents were not processed before the --timeout: {}",
                    missing.len(),
                    documents.len(),
                    missing.join(", ")
                )));
            }
            status = emulator.child.wait() => {
                let reason = match status {
                    Ok(status) => format!("it exited ({status})"),
                    Err(error) => error.to_string(),
                };
                return Err(Failure::Failed(format!(
                    "the emulator failed: {reason}; RUST_LOG=cloud_tasks_emulator=info shows its log"
                )));
            }
        };
        let (delivery, simulated_failure) = match event {
            Some(Event::Delivered {
                delivery,
                simulated_failure,
            }) => (delivery, simulated_failure),
            Some(Event::Rejected(reason)) => {
                return Err(Failure::Failed(format!(
                    "the handler refused a delivery: {reason}"
                )));
            }
            None => return Err(Failure::Failed("the local handler stopped".to_owned())),
        };
        tally.deliveries += 1;
        let context = &delivery.context;
        if context.is_retry() {
            tally.retries += 1;
        }
        let previous = context
            .previous_response
            .map(|status| format!(" (after {status})"))
            .unwrap_or_default();
        let outcome = if simulated_failure {
            "-> 503 simulated failure, Cloud Tasks retries"
        } else {
            processed.insert(delivery.payload.document_id);
            "-> 200 processed"
        };
        println!(
            "  {} {}  {:<24} task {:<20}  retry {}{previous:<12}  OIDC token verified  {outcome}",
            if simulated_failure { "✗" } else { "✓" },
            delivery.payload.document_id,
            quoted(&delivery.payload.filename),
            context.task_name,
            context.retry_count,
        );
    }
    Ok(tally)
}

/// The emulator's process, stopped when dropped.
struct EmulatorProcess {
    child: Child,
    /// Held open for as long as the demo runs: the emulator stops when it closes. Kept apart
    /// from `child` because `Child::wait` closes the stdin it holds.
    _stdin: ChildStdin,
}

/// Starts `cloud-tasks emulator` on a free loopback port, serving `queue`, as a child of this
/// process that stops with it: when dropped, and when its standard input closes (this process
/// died). Its log lines go to `tracing` (target `cloud_tasks_emulator`), not to the terminal.
/// Returns the child and the address it serves.
async fn start_emulator(
    queue: &str,
    deadline: Instant,
) -> Result<(EmulatorProcess, SocketAddr), Failure> {
    let failed = |reason: String| Failure::Failed(format!("cannot start the emulator: {reason}"));
    let program = std::env::current_exe().map_err(|error| failed(error.to_string()))?;
    let mut child = Command::new(program)
        .args(["emulator", "--listen", "127.0.0.1:0", "--queues", queue])
        .arg("--exit-with-stdin")
        // Its issuer must be the address it binds, which only it knows.
        .env_remove("OIDC_ISSUER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| failed(error.to_string()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "cloud_tasks_emulator", "{line}");
        }
    });
    // It prints the variables to export once it listens; the address is the one a client uses.
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let prefix = format!("export {EMULATOR_HOST_VAR}=");
    let address = loop {
        let line = tokio::time::timeout_at(deadline.into(), stdout.next_line())
            .await
            .map_err(|_| failed("it did not report its address before the --timeout".to_owned()))?
            .map_err(|error| failed(error.to_string()))?
            .ok_or_else(|| {
                failed("it exited; RUST_LOG=cloud_tasks_emulator=info shows why".to_owned())
            })?;
        if let Some(address) = line.strip_prefix(&prefix) {
            break address
                .parse::<SocketAddr>()
                .map_err(|error| failed(format!("address {address:?}: {error}")))?;
        }
    };
    // The rest is read too: a closed pipe would make its next print fail.
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            tracing::debug!(target: "cloud_tasks_emulator", "{line}");
        }
    });
    let stdin = child.stdin.take().expect("stdin is piped");
    Ok((
        EmulatorProcess {
            child,
            _stdin: stdin,
        },
        address,
    ))
}

/// Waits until the emulator has recorded every answer and holds no task, using its
/// `GET /emulator/{queue}:waitIdle` endpoint.
async fn wait_idle(emulator: &SocketAddr, queue: &str, deadline: Instant) -> Result<(), Failure> {
    let url = format!("http://{emulator}/emulator/{queue}:waitIdle");
    let timeout = deadline.saturating_duration_since(Instant::now());
    let failed = |reason: String| Failure::Failed(format!("the queue did not drain: {reason}"));
    let response = reqwest::Client::new()
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|error| failed(error.to_string()))?;
    if response.status() != reqwest::StatusCode::NO_CONTENT {
        return Err(failed(format!("{url} answered {}", response.status())));
    }
    Ok(())
}

pub(super) fn non_empty_or<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

fn sample_filename(index: usize) -> String {
    let name = SAMPLE_FILENAMES[index % SAMPLE_FILENAMES.len()];
    match index / SAMPLE_FILENAMES.len() {
        0 => name.to_owned(),
        round => format!("{round}-{name}"),
    }
}

fn quoted(filename: &str) -> String {
    format!("{filename:?}")
}

/// The task ID: the last segment of the full name.
fn short_task(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}
