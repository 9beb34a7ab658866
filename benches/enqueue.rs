//! Enqueue benchmark: raw tonic stub vs `CloudTasksClient` per task vs the batch path, at
//! concurrency 1, 16 and 64, against the mock server on loopback; then `enqueue-batch` of 100,000
//! documents (peak RSS) and the official Python client at the same concurrencies (CPU per
//! task). If valgrind is installed, also the user-space instructions per task of the raw stub
//! and the client (callgrind), a figure that other load on the machine does not change.
//!
//! Run: `cargo bench --bench enqueue --features testing,cli` (see PERFORMANCE.md).
//!
//! The server runs in a child process (this executable with `__serve`), so the bench process
//! holds only client code: its CPU time (getrusage RUSAGE_SELF, user + system, all threads) is
//! the client's, and its peak RSS (VmHWM, reset through /proc/self/clear_refs before each
//! scenario) is the client's. Environment: BENCH_TASKS (per-task calls per scenario, default
//! 10000), BENCH_BATCH_TASKS (tasks per batch scenario, default 40000), BENCH_CLI_DOCS (default
//! 100000), BENCH_ROUNDS (default 7), BENCH_CONCURRENCY (e.g. `1,16`), BENCH_PYTHON (an
//! interpreter with google-cloud-tasks 2.26; by default a virtual environment under target/
//! with what benches/requirements.txt pins, created with pip on the first run).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cloud_tasks::proto::{CreateTaskRequest, RawCloudTasksClient, Task};
use cloud_tasks::testing::MockCloudTasks;
use cloud_tasks::{
    BatchOptions, CloudTasksClient, Enqueued, ProcessDocumentPayload, RateLimit, Uuid,
};
use tonic::transport::{Channel, Endpoint};

#[path = "../tests/common/python.rs"]
mod python;

const PROJECT: &str = "bench-project";
const QUEUE_PATH: &str = "projects/bench-project/locations/us-central1/queues/document-processing";
const SERVICE_URL: &str = "https://backend-abc123-uc.a.run.app";
const SERVICE_ACCOUNT: &str = "tasks-invoker@bench-project.iam.gserviceaccount.com";
const CONCURRENCIES: [usize; 3] = [1, 16, 64];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "__serve") {
        serve();
        return;
    }
    if let [_, mode, path, host, calls] = args.as_slice()
        && mode == "__instructions"
    {
        run_for_instruction_count(path, host, calls.parse().unwrap());
        return;
    }
    let sizes = Sizes {
        per_task: env_usize("BENCH_TASKS", 10_000),
        batch: env_usize("BENCH_BATCH_TASKS", 40_000),
        rounds: env_usize("BENCH_ROUNDS", 7).max(1),
    };
    let cli_docs = env_usize("BENCH_CLI_DOCS", 100_000);
    let concurrencies: Vec<usize> = std::env::var("BENCH_CONCURRENCY").map_or_else(
        |_| CONCURRENCIES.to_vec(),
        |list| {
            list.split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect()
        },
    );

    let mut server = Server::start();
    // First, while this process is small: a child's ru_maxrss on Linux also counts the peak RSS
    // of the process that spawned it, up to its exec.
    let cli = enqueue_batch_cli(&server.host, cli_docs);
    let bench_peak_at_spawn_kb = peak_rss_kb();
    let multi_thread = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let current_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("# Enqueue benchmark\n");
    println!("{}\n", machine());
    println!(
        "Each row is the median of {} rounds (paths interleaved); per-task rows {} tasks, \
         batch rows {} tasks per round.\n",
        sizes.rounds, sizes.per_task, sizes.batch
    );
    println!("## Client on a Tokio multi-thread runtime (2 workers), as the CLI runs\n");
    print_header();
    let mut results = Vec::new();
    for &concurrency in &concurrencies {
        let rounds = run_paths(&multi_thread, &server.host, concurrency, &sizes, true);
        for path in &rounds {
            Measured::median(path).print_row();
        }
        results.push(rounds);
    }
    println!("\nLatency is per call: one task, or one batch of 100 tasks.\n");
    println!("### Ratios (median of the per-round ratios; targets in brackets)\n");
    println!(
        "| concurrency | client/raw CPU per task [<= 1.3] | client/raw p99 [<= 1.2] | batch/per-task tasks/s [>= 5] |"
    );
    println!("|---:|---:|---:|---:|");
    for rows in &results {
        let (raw, client, batch) = (&rows[0], &rows[1], &rows[2]);
        println!(
            "| {} | {:.2} | {:.2} | {:.1} |",
            raw[0].concurrency,
            median_ratio(client, raw, Measured::cpu_per_task_us),
            median_ratio(client, raw, |m| m.p99_us),
            median_ratio(batch, client, Measured::tasks_per_s),
        );
    }

    println!("\n## Client on a Tokio current-thread runtime, concurrency 1\n");
    print_header();
    let single = run_paths(&current_thread, &server.host, 1, &sizes, false);
    for path in &single {
        Measured::median(path).print_row();
    }
    println!(
        "\nclient/raw CPU per task {:.2}, p99 {:.2}",
        median_ratio(&single[1], &single[0], Measured::cpu_per_task_us),
        median_ratio(&single[1], &single[0], |m| m.p99_us),
    );

    println!(
        "\n## User-space instructions per task (callgrind), current-thread runtime, concurrency 1\n"
    );
    match instructions_per_task(&server.host) {
        Ok(InstructionCounts { raw, client, batch }) => {
            println!("| path | instructions/task |\n|---|---:|");
            println!("| raw tonic stub, CreateTask | {raw:.0} |");
            println!("| CloudTasksClient, CreateTask per task | {client:.0} |");
            println!("| CloudTasksClient, BatchCreateTasks x100 | {batch:.0} |");
            println!(
                "\nclient/raw instructions per task {:.3} ({INSTRUCTION_COUNT_CALLS} tasks each; \
                 repeatable to about 1%, whatever else runs on the machine)",
                client / raw
            );
        }
        Err(reason) => println!("skipped: {reason}"),
    }

    println!(
        "\n## First call of a new client through a proxy adding {} ms each way\n",
        PROXY_ONE_WAY.as_millis()
    );
    let (raw_first, client_first) = multi_thread.block_on(first_calls(&server.host, sizes.rounds));
    println!(
        "| path | first call, connecting included (ms, median of {}) |\n|---|---:|",
        sizes.rounds
    );
    println!(
        "| raw tonic stub (`Endpoint::connect`, then CreateTask) | {:.1} |",
        median(&raw_first)
    );
    println!(
        "| CloudTasksClient (`build`, then CreateTask) | {:.1} |",
        median(&client_first)
    );
    let ratios: Vec<f64> = client_first
        .iter()
        .zip(&raw_first)
        .map(|(c, r)| c / r)
        .collect();
    println!(
        "\nclient/raw first call {:.2} (median of the per-round ratios) [<= 1.25]",
        median(&ratios)
    );

    println!("\n## `cloud-tasks enqueue-batch` of {cli_docs} documents (release build)\n");
    println!(
        "peak RSS {:.1} MB [target < 50 MB]; {} (run first; ru_maxrss, which also covers this \
         process's peak when it spawned the CLI, {:.1} MB)",
        cli.max_rss_kb as f64 / 1024.0,
        cli.summary,
        bench_peak_at_spawn_kb as f64 / 1024.0
    );

    println!(
        "\n## Official Python client (google-cloud-tasks 2.26 over grpcio), same concurrencies\n"
    );
    println!(
        "Python: N threads sharing one client, sequential calls each; Rust: the rows above (N \
         Tokio tasks on one client), and at concurrency 1 also on a current-thread runtime.\n"
    );
    println!(
        "| concurrency | client | tasks/s | client CPU/task (µs) | of which user (µs) | p50 latency (µs) | p99 latency (µs) | peak RSS (MB) | Python/Rust CPU per task [>= 10] | Python/Rust user CPU per task |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for rows in &results {
        let concurrency = rows[0][0].concurrency;
        let python = match python_client(&server.host, sizes.per_task, concurrency) {
            Ok(python) => python,
            Err(reason) => {
                println!("| {concurrency} | Python: skipped: {reason} | | | | | | | | |");
                break;
            }
        };
        let python_cpu_per_task = python.cpu_s * 1e6 / python.tasks as f64;
        let python_user_per_task = python.user_s * 1e6 / python.tasks as f64;
        println!(
            "| {concurrency} | Python `CloudTasksClient.create_task` | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | | |",
            python.tasks as f64 / python.wall_s,
            python_cpu_per_task,
            python_user_per_task,
            python.p50_us,
            python.p99_us,
            python.max_rss_kb as f64 / 1024.0
        );
        // The raw stub's rows show what the generated stub on tonic's own channel costs.
        let mut rust_rows = vec![
            (
                "Rust `create_document_processing_task`, multi-thread runtime",
                Measured::median(&rows[1]),
            ),
            (
                "raw tonic stub, multi-thread runtime",
                Measured::median(&rows[0]),
            ),
        ];
        if concurrency == 1 {
            rust_rows.insert(
                1,
                (
                    "Rust `create_document_processing_task`, current-thread runtime",
                    Measured::median(&single[1]),
                ),
            );
            rust_rows.push((
                "raw tonic stub, current-thread runtime",
                Measured::median(&single[0]),
            ));
        }
        for (client, rust) in rust_rows {
            println!(
                "| {concurrency} | {client} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
                rust.tasks_per_s(),
                rust.cpu_per_task_us(),
                rust.user_per_task_us(),
                rust.p50_us,
                rust.p99_us,
                rust.peak_rss_kb as f64 / 1024.0,
                python_cpu_per_task / rust.cpu_per_task_us(),
                python_user_per_task / rust.user_per_task_us()
            );
        }
    }
    server.stop();
}

struct Sizes {
    per_task: usize,
    batch: usize,
    rounds: usize,
}

fn print_header() {
    println!(
        "| path | concurrency | tasks | tasks/s | client CPU/task (µs) | p50 latency (µs) | p99 latency (µs) | peak RSS (MB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
}

/// Raw stub, client per task and (if `batch`) the batch path at one concurrency: each path's
/// measurements in `sizes.rounds` interleaved rounds. The raw stub and the client swap places
/// every round, so that neither is always the one that runs second (right after the other
/// path's load; running the client against itself, the second of two identical paths had a p99
/// 1.1x the first's on the median round). Clients are built on `runtime`, which then drives
/// their connections.
fn run_paths(
    runtime: &tokio::runtime::Runtime,
    host: &str,
    concurrency: usize,
    sizes: &Sizes,
    batch: bool,
) -> Vec<Vec<Measured>> {
    let (client, raw) = runtime.block_on(connect(host));
    let paths = if batch { 3 } else { 2 };
    let mut rounds: Vec<Vec<Measured>> = (0..paths).map(|_| Vec::new()).collect();
    for round in 0..sizes.rounds {
        let measure_raw = || {
            let raw = raw.clone();
            runtime.block_on(measure(
                "raw tonic stub, CreateTask",
                concurrency,
                sizes.per_task,
                1,
                move |_| raw_create_task(raw.clone()),
            ))
        };
        let measure_client = || {
            let client = client.clone();
            runtime.block_on(measure(
                "CloudTasksClient, CreateTask per task",
                concurrency,
                sizes.per_task,
                1,
                move |index| client_create_task(client.clone(), index),
            ))
        };
        if round % 2 == 0 {
            rounds[0].push(measure_raw());
            rounds[1].push(measure_client());
        } else {
            rounds[1].push(measure_client());
            rounds[0].push(measure_raw());
        }
        if batch {
            let batch_client = client.clone();
            rounds[2].push(runtime.block_on(measure(
                "CloudTasksClient, BatchCreateTasks x100",
                concurrency,
                sizes.batch,
                100,
                move |index| {
                    let client = batch_client.clone();
                    async move {
                        client_create_batch(client, index).await;
                    }
                },
            )));
        }
    }
    rounds
}

/// The crate's client and the raw generated stub, each with its own HTTP/2 connection to `host`.
async fn connect(host: &str) -> (CloudTasksClient, RawCloudTasksClient<Channel>) {
    let client = CloudTasksClient::builder()
        .with_project_id(PROJECT)
        .with_service_url(SERVICE_URL)
        .with_service_account_email(SERVICE_ACCOUNT)
        .with_emulator_host(host)
        .build()
        .unwrap();
    let channel: Channel = Endpoint::from_shared(format!("http://{host}"))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    (client, RawCloudTasksClient::new(channel))
}

/// One call of the raw-stub path: a prebuilt task, no metadata, no deadline.
async fn raw_create_task(mut stub: RawCloudTasksClient<Channel>) {
    let request = CreateTaskRequest {
        parent: QUEUE_PATH.to_owned(),
        task: Some(raw_task()),
        ..CreateTaskRequest::default()
    };
    stub.create_task(request).await.unwrap();
}

/// One call of the client path, for the `index`-th document.
async fn client_create_task(client: CloudTasksClient, index: usize) {
    client
        .create_document_processing_task(Uuid::new_v4(), &format!("scan-{index}.pdf"))
        .await
        .unwrap();
}

/// One call of the batch path: the `index`-th batch of 100 documents, one `BatchCreateTasks`.
async fn client_create_batch(client: CloudTasksClient, index: usize) {
    let documents = (0..100).map(|offset| ProcessDocumentPayload {
        document_id: Uuid::new_v4(),
        filename: format!("scan-{}.pdf", index * 100 + offset),
    });
    let outcomes = client
        .enqueue_all(
            documents,
            // The client's speed, not Cloud Tasks' ramp.
            BatchOptions::new()
                .with_concurrency(1)
                .with_rate_limit(RateLimit::none()),
        )
        .await;
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.as_ref().is_ok_and(Enqueued::was_created))
    );
}

/// Tasks per path for the instruction counts: enough that connection setup and warm-up are
/// excluded and per-call variation averages out, few enough for callgrind's ~50x slowdown.
const INSTRUCTION_COUNT_CALLS: usize = 2_000;

/// User-space instructions per task of each path, counted by callgrind.
struct InstructionCounts {
    raw: f64,
    client: f64,
    batch: f64,
}

/// User-space instructions per task of the raw stub, the client and the batch path, each
/// counted by callgrind over `INSTRUCTION_COUNT_CALLS` tasks sent one call after another (one
/// task a call, or 100 for the batch path) on a current-thread runtime against the same server. Unlike CPU time, the count does not depend on what else
/// runs on the machine, so their ratio is repeatable to within a fraction of a percent; it
/// leaves out kernel time (the system calls and loopback TCP work), which is the same for both.
fn instructions_per_task(host: &str) -> Result<InstructionCounts, String> {
    let count = |path: &str, tasks_per_call: usize| -> Result<f64, String> {
        let out_file = target_dir().join(format!("bench-callgrind-{path}.out"));
        let output = Command::new("valgrind")
            // Valgrind counts every iteration of `rep movsb` as an instruction, so glibc's
            // memcpy of a few KB (an async state machine being moved) would count thousands of
            // instructions where the CPU spends a few dozen cycles; its vector loop keeps the
            // count closer to the work.
            .env(
                "GLIBC_TUNABLES",
                "glibc.cpu.x86_rep_movsb_threshold=1000000000",
            )
            .arg("--tool=callgrind")
            // Count only inside the timed loop: not startup, connecting, or warm-up.
            .arg("--toggle-collect=*measured_calls*")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(std::env::current_exe().unwrap())
            .args(["__instructions", path, host])
            .arg((INSTRUCTION_COUNT_CALLS / tasks_per_call).to_string())
            .stdout(Stdio::null())
            .output()
            .map_err(|error| format!("cannot run valgrind ({error}); install it to get counts"))?;
        if !output.status.success() {
            return Err(format!(
                "valgrind failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let profile = std::fs::read_to_string(&out_file).map_err(|error| error.to_string())?;
        std::fs::remove_file(&out_file).ok();
        let total: u64 = profile
            .lines()
            .find_map(|line| {
                line.strip_prefix("summary:")
                    .or(line.strip_prefix("totals:"))
            })
            .and_then(|counts| counts.split_whitespace().next()?.parse().ok())
            .ok_or("no instruction total in the callgrind output")?;
        Ok(total as f64 / INSTRUCTION_COUNT_CALLS as f64)
    };
    Ok(InstructionCounts {
        raw: count("raw", 1)?,
        client: count("client", 1)?,
        batch: count("batch", 100)?,
    })
}

/// `__instructions PATH HOST CALLS`, run under callgrind by `instructions_per_task`: `CALLS`
/// sequential calls of one path on a current-thread runtime (one thread, so the count does not
/// depend on how work lands on threads), after connecting and warming up.
fn run_for_instruction_count(path: &str, host: &str, calls: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, raw) = runtime.block_on(connect(host));
    let call = |index: usize| {
        let (client, raw) = (client.clone(), raw.clone());
        async move {
            match path {
                "raw" => raw_create_task(raw).await,
                "batch" => client_create_batch(client, index).await,
                _ => client_create_task(client, index).await,
            }
        }
    };
    runtime.block_on(async {
        for index in 0..100 {
            call(index).await;
        }
    });
    measured_calls(&runtime, calls, call);
}

/// The loop callgrind counts (`--toggle-collect`): everything the runtime does during it,
/// including the connection's I/O, runs on this thread inside `block_on`.
#[inline(never)]
fn measured_calls<Fut: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    calls: usize,
    call: impl Fn(usize) -> Fut,
) {
    runtime.block_on(async {
        for index in 0..calls {
            call(index).await;
        }
    });
}

/// One-way delay the first-call proxy adds: 50 ms round trips, a client in one region calling a
/// front end in another.
const PROXY_ONE_WAY: Duration = Duration::from_millis(25);

/// The first call of a new raw stub and of a new client, each on a new connection through a
/// proxy adding [`PROXY_ONE_WAY`] each way, in milliseconds, `rounds` of each (order swapped
/// every round): what a cold process pays before its first task is enqueued.
async fn first_calls(host: &str, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let proxy = delaying_proxy(host.to_owned()).await;
    let (mut raw, mut client) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for path in if round % 2 == 0 {
            ["raw", "client"]
        } else {
            ["client", "raw"]
        } {
            let started = Instant::now();
            if path == "raw" {
                let channel = Endpoint::from_shared(format!("http://{proxy}"))
                    .unwrap()
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .unwrap();
                raw_create_task(RawCloudTasksClient::new(channel)).await;
                raw.push(started.elapsed().as_secs_f64() * 1e3);
            } else {
                let new_client = CloudTasksClient::builder()
                    .with_project_id(PROJECT)
                    .with_service_url(SERVICE_URL)
                    .with_service_account_email(SERVICE_ACCOUNT)
                    .with_emulator_host(&proxy)
                    .build()
                    .unwrap();
                client_create_task(new_client, round).await;
                client.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    (raw, client)
}

/// A TCP proxy to `upstream` that delivers every chunk [`PROXY_ONE_WAY`] after it was read, in
/// both directions; its `host:port`.
async fn delaying_proxy(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            inbound.set_nodelay(true).unwrap();
            outbound.set_nodelay(true).unwrap();
            let (inbound_read, inbound_write) = inbound.into_split();
            let (outbound_read, outbound_write) = outbound.into_split();
            tokio::spawn(delayed_copy(inbound_read, outbound_write));
            tokio::spawn(delayed_copy(outbound_read, inbound_write));
        }
    });
    host
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (chunks, mut delayed) = tokio::sync::mpsc::unbounded_channel::<(_, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = delayed.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read @ 1..) = from.read(&mut buffer).await {
        let due = tokio::time::Instant::now() + PROXY_ONE_WAY;
        if chunks.send((due, buffer[..read].to_vec())).is_err() {
            break;
        }
    }
    drop(chunks);
    writer.await.ok();
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The median over rounds of `metric(a) / metric(b)`, each ratio from one round, where the two
/// paths ran back to back: steadier than a ratio of medians when other load comes and goes.
fn median_ratio(a: &[Measured], b: &[Measured], metric: impl Fn(&Measured) -> f64) -> f64 {
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| metric(a) / metric(b))
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// The same task the client builds, prebuilt once: the raw stub's cost is the call alone.
fn raw_task() -> Task {
    thread_local! {
        static TASK: Task = prebuilt_task();
    }
    TASK.with(Clone::clone)
}

fn prebuilt_task() -> Task {
    use cloud_tasks::proto::{
        AuthorizationHeader, HttpMethod, HttpRequest, MessageType, OidcToken,
    };
    let payload = ProcessDocumentPayload {
        document_id: Uuid::new_v4(),
        filename: "scan-0.pdf".to_owned(),
    };
    Task {
        dispatch_deadline: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        message_type: Some(MessageType::HttpRequest(HttpRequest {
            url: format!("{SERVICE_URL}/api/tasks/process-document"),
            http_method: HttpMethod::Post.into(),
            headers: [("Content-Type".to_owned(), "application/json".to_owned())].into(),
            body: payload.to_json_bytes(),
            authorization_header: Some(AuthorizationHeader::OidcToken(OidcToken {
                service_account_email: SERVICE_ACCOUNT.to_owned(),
                audience: SERVICE_URL.to_owned(),
            })),
        })),
        ..Task::default()
    }
}

struct Measured {
    path: &'static str,
    concurrency: usize,
    tasks: usize,
    wall: Duration,
    cpu: Duration,
    /// The part of `cpu` spent in user space (the rest is the kernel: syscalls and, on loopback,
    /// the TCP processing of what this process sends).
    user: Duration,
    p50_us: f64,
    p99_us: f64,
    peak_rss_kb: u64,
}

impl Measured {
    /// Each metric's median over the rounds (peak RSS: the largest).
    fn median(rounds: &[Self]) -> Self {
        fn median_by<T: Copy + PartialOrd>(
            rounds: &[Measured],
            metric: impl Fn(&Measured) -> T,
        ) -> T {
            let mut values: Vec<T> = rounds.iter().map(metric).collect();
            values.sort_by(|a, b| a.partial_cmp(b).unwrap());
            values[values.len() / 2]
        }
        let wall = median_by(rounds, |m| m.wall);
        let cpu = median_by(rounds, |m| m.cpu);
        let user = median_by(rounds, |m| m.user);
        let p50_us = median_by(rounds, |m| m.p50_us);
        let p99_us = median_by(rounds, |m| m.p99_us);
        let peak_rss_kb = rounds.iter().map(|m| m.peak_rss_kb).max().unwrap_or(0);
        Self {
            wall,
            cpu,
            user,
            p50_us,
            p99_us,
            peak_rss_kb,
            ..rounds[0]
        }
    }

    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_task_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.tasks as f64
    }

    fn user_per_task_us(&self) -> f64 {
        self.user.as_secs_f64() * 1e6 / self.tasks as f64
    }

    fn print_row(&self) {
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} |",
            self.path,
            self.concurrency,
            self.tasks,
            self.tasks_per_s(),
            self.cpu_per_task_us(),
            self.p50_us,
            self.p99_us,
            self.peak_rss_kb as f64 / 1024.0
        );
    }
}

/// Runs `tasks / tasks_per_call` calls of `call`, `concurrency` at a time, after a warm-up.
async fn measure<F, Fut>(
    path: &'static str,
    concurrency: usize,
    tasks: usize,
    tasks_per_call: usize,
    call: F,
) -> Measured
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    for index in 0..concurrency.max(8) {
        call(index).await;
    }
    let calls = tasks / tasks_per_call;
    reset_peak_rss();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let next = next.clone();
        let call = call.clone();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(calls / concurrency + 1);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= calls {
                    return latencies;
                }
                let started = Instant::now();
                call(index).await;
                latencies.push(started.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(calls);
    while let Some(joined) = workers.join_next().await {
        latencies.extend(joined.unwrap());
    }
    let wall = started.elapsed();
    let (cpu_after, user_after) = cpu_time();
    let (cpu, user) = (cpu_after - cpu_before.0, user_after - cpu_before.1);
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies[(latencies.len() * p / 100).min(latencies.len() - 1)].as_secs_f64() * 1e6
    };
    Measured {
        path,
        concurrency,
        tasks: calls * tasks_per_call,
        wall,
        cpu,
        user,
        p50_us: percentile(50),
        p99_us: percentile(99),
        peak_rss_kb: peak_rss_kb(),
    }
}

/// (user + system, user) CPU time of this process, all threads.
fn cpu_time() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let timeval = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (
        timeval(usage.ru_utime) + timeval(usage.ru_stime),
        timeval(usage.ru_utime),
    )
}

/// Resets VmHWM to the current RSS (Linux >= 4.0), so each scenario reports its own peak.
fn reset_peak_rss() {
    if let Err(error) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({error}); peaks are since the start");
    }
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|name| name.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!(
        "Machine: {cores} cores ({cpu}); client: Tokio multi-thread runtime, 2 workers; server: \
         the crate's mock server in a separate process, loopback TCP, plaintext HTTP/2."
    )
}

/// The mock server in a child process: this executable with `__serve`.
struct Server {
    child: Child,
    host: String,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("__serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let host = line.trim().to_owned();
        assert!(!host.is_empty(), "the server did not start");
        Self { child, host }
    }

    fn stop(&mut self) {
        // Closing its stdin ends the server.
        drop(self.child.stdin.take());
        self.child.wait().unwrap();
    }
}

fn serve() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = MockCloudTasks::start().await.unwrap();
        server.forget_history();
        println!("{}", server.host());
        std::io::stdout().flush().unwrap();
        // Until the parent closes stdin (or dies).
        tokio::task::spawn_blocking(|| std::io::stdin().lines().count())
            .await
            .unwrap();
    });
}

struct CliRun {
    max_rss_kb: i64,
    summary: String,
}

/// Runs the release `cloud-tasks enqueue-batch` on a generated file and reads its peak RSS from
/// wait4.
fn enqueue_batch_cli(host: &str, documents: usize) -> CliRun {
    let input = target_dir().join("bench-enqueue-batch.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for index in 0..documents {
        writeln!(
            file,
            r#"{{"document_id": "{}", "filename": "scan-{index}.pdf"}}"#,
            Uuid::new_v4()
        )
        .unwrap();
    }
    file.flush().unwrap();
    drop(file);
    #[allow(
        clippy::zombie_processes,
        reason = "reaped by wait4 below, which also reports its peak RSS"
    )]
    let child = Command::new(env!("CARGO_BIN_EXE_cloud-tasks"))
        .env_clear()
        .current_dir(target_dir())
        .env("GCP_PROJECT_ID", PROJECT)
        .env("CLOUD_RUN_SERVICE_URL", SERVICE_URL)
        .env("CLOUD_RUN_SERVICE_ACCOUNT", SERVICE_ACCOUNT)
        .env("CLOUD_TASKS_EMULATOR_HOST", host)
        .arg("enqueue-batch")
        // The client's own speed, not Cloud Tasks' ramp (which would take 200 s here).
        .arg("--no-ramp")
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut stderr = child.stderr.unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut status = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `pid` is our child, not yet waited for; wait4 fills `status` and `usage`.
    let usage = unsafe {
        assert_eq!(libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()), pid);
        usage.assume_init()
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "enqueue-batch failed"
    );
    let summary = reader.join().unwrap().trim().to_owned();
    std::fs::remove_file(&input).ok();
    CliRun {
        max_rss_kb: usage.ru_maxrss,
        summary,
    }
}

fn target_dir() -> PathBuf {
    // The bench executable lives in target/release/deps.
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

struct PythonRun {
    tasks: usize,
    wall_s: f64,
    cpu_s: f64,
    user_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_rss_kb: u64,
}

fn python_client(host: &str, tasks: usize, concurrency: usize) -> Result<PythonRun, String> {
    let python = match std::env::var_os("BENCH_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => python::python_with(
            &target_dir(),
            "bench",
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/requirements.txt"),
        )?,
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python_client.py");
    let output = Command::new(&python)
        .arg(script)
        .arg(host)
        .arg(tasks.to_string())
        .arg(concurrency.to_string())
        .output()
        .map_err(|error| format!("cannot run {}: {error}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "the Python client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())?;
    let number = |key: &str| value[key].as_f64().unwrap_or(f64::NAN);
    Ok(PythonRun {
        tasks: value["tasks"].as_u64().unwrap_or(0) as usize,
        wall_s: number("wall_s"),
        cpu_s: number("cpu_s"),
        user_s: number("user_s"),
        p50_us: number("p50_us"),
        p99_us: number("p99_us"),
        max_rss_kb: value["max_rss_kb"].as_u64().unwrap_or(0),
    })
}
