//! The transport against gRPC's C-core server (the `grpcio` package, driven through
//! tests/ccore/server.py): an HTTP/2 implementation nobody here wrote, set up like Google's
//! front ends (100 streams per connection, connections retired with GOAWAY). Each test ends
//! with every document stored exactly once and no call reported as "may exist".
//!
//! Needs only `python3`: the first run makes a virtual environment under the target directory
//! with the versions `tests/ccore/requirements.txt` pins (see `common::python`).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cloud_tasks::{CloudTasksClient, Uuid};
use common::*;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The server script, and what it holds when told to stop.
struct CCore {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    port: u16,
}

#[derive(Debug, Deserialize)]
struct Stored {
    /// Tasks stored per document ID.
    documents: HashMap<Uuid, u32>,
    already_exists: u64,
    /// Distinct client connections seen.
    peers: usize,
}

impl CCore {
    async fn start(args: &[&str]) -> Self {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ccore");
        let python = tokio::task::spawn_blocking(move || {
            python::python_with(
                Path::new(env!("CARGO_TARGET_TMPDIR")),
                "ccore",
                &here.join("requirements.txt"),
            )
        })
        .await
        .unwrap()
        .unwrap_or_else(|error| panic!("{error}"));
        let mut child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ccore/server.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("run the C-core server's Python");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("the C-core server did not start within 60 s")
            .unwrap();
        let Some(port) = first.as_deref().and_then(|line| line.strip_prefix("PORT ")) else {
            panic!("the C-core server did not start ({first:?})");
        };
        Self {
            child,
            stdin,
            stdout,
            port: port.parse().unwrap(),
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn stop(mut self) -> Stored {
        self.stdin.shutdown().await.unwrap();
        drop(self.stdin);
        let line = self.stdout.next_line().await.unwrap().unwrap();
        self.child.wait().await.unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

fn assert_each_stored_once(stored: &Stored, documents: &[Uuid]) {
    assert_eq!(stored.documents.len(), documents.len(), "documents stored");
    let not_once: Vec<_> = documents
        .iter()
        .filter(|id| stored.documents.get(id) != Some(&1))
        .collect();
    assert!(not_once.is_empty(), "not stored exactly once: {not_once:?}");
}

/// `count` unnamed documents enqueued at once through one client; every call must succeed.
async fn enqueue_all_at_once(client: &CloudTasksClient, count: usize) -> Vec<Uuid> {
    let documents: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let calls = documents.iter().map(|&id| {
        let client = client.clone();
        tokio::spawn(async move { client.create_document_processing_task(id, "a.pdf").await })
    });
    for call in calls.collect::<Vec<_>>() {
        if let Err(error) = call.await.unwrap() {
            panic!(
                "a call failed (task may exist: {}): {error}",
                error.task_may_exist()
            );
        }
    }
    documents
}

/// 1,000 unnamed calls at once on one client against connections of 100 streams, each retired
/// after a second: calls beyond one connection's limit go to more connections, calls caught by
/// a GOAWAY go again (they were not processed), and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_at_once_on_connections_of_100_streams_retired_every_second() {
    let server = CCore::start(&["--max-streams", "100", "--max-age-ms", "1000"]).await;
    let client = builder().with_emulator_host(server.host()).build().unwrap();
    let mut documents = Vec::new();
    let started = Instant::now();
    // Several rounds, so that connections are retired while calls are in flight.
    while started.elapsed() < Duration::from_secs(3) {
        documents.extend(enqueue_all_at_once(&client, 1000).await);
    }
    let stored = server.stop().await;
    assert_each_stored_once(&stored, &documents);
    assert!(
        stored.peers > 2,
        "connections were retired and replaced: {stored:?}"
    );
}

/// A server admitting 10 streams per connection while 300 calls are in flight on at most two
/// connections: the client waits for the server's SETTINGS before its first stream and never
/// opens more than 10 on a connection; the other calls wait for room. (Opening more makes
/// C-core refuse them, with REFUSED_STREAM, or with ENHANCE_YOUR_CALM, which does not say the
/// call was not processed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_limit_below_the_calls_in_flight() {
    let server = CCore::start(&["--max-streams", "10"]).await;
    let client = builder()
        .with_emulator_host(server.host())
        .with_max_connections(2)
        .build()
        .unwrap();
    let documents = enqueue_all_at_once(&client, 300).await;
    let stored = server.stop().await;
    assert_each_stored_once(&stored, &documents);
    assert!(stored.peers <= 2, "{stored:?}");
}

/// A connection that stops passing anything on while idle is found by the keepalive PING and
/// closed; the next call goes to a new connection at once instead of timing out on the dead
/// one (and being reported as "may exist").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_frozen_while_idle_is_replaced_before_the_next_call() {
    let server = CCore::start(&["--permit-pings-ms", "50"]).await;
    let proxy = FreezingProxy::start(server.host().parse().unwrap()).await;
    let client = builder()
        .with_emulator_host(&proxy.host)
        .with_keepalive_interval(Some(Duration::from_millis(200)))
        .with_keepalive_timeout(Duration::from_millis(300))
        .with_attempt_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let before = Uuid::new_v4();
    client
        .create_document_processing_task(before, "before.pdf")
        .await
        .unwrap();
    proxy.freeze_all();
    // Long enough for a PING to be sent and go unanswered.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let after = Uuid::new_v4();
    let started = Instant::now();
    client
        .create_document_processing_task(after, "after.pdf")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the call waited on the dead connection: {:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.connections(),
        2,
        "a new connection replaced the frozen one"
    );
    let stored = server.stop().await;
    assert_each_stored_once(&stored, &[before, after]);
}

/// A listener whose accept queue is full: connection attempts to it get no answer at all, as
/// to an address whose packets are dropped. Keep both while it is needed.
fn black_hole(address: SocketAddr) -> (tokio::net::TcpListener, std::net::TcpStream) {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    socket.bind(address).unwrap();
    let listener = socket.listen(0).unwrap();
    // The one connection the queue holds; every later SYN is dropped.
    let filler = std::net::TcpStream::connect(address).unwrap();
    (listener, filler)
}

/// One call through a client whose endpoint resolves to `black` (dropping every packet) and
/// then `good` (the server): the document stored once, and how long the call took.
async fn call_past_a_black_hole(
    server: CCore,
    black: IpAddr,
    good: IpAddr,
    connect_timeout: Duration,
) -> Duration {
    let _hole = black_hole((black, server.port).into());
    let client = builder()
        .with_emulator_host(format!("localhost:{}", server.port))
        .with_resolved_addresses([black, good])
        .with_connect_timeout(connect_timeout)
        .build()
        .unwrap();
    let document = Uuid::new_v4();
    let started = Instant::now();
    client
        .create_document_processing_task(document, "a.pdf")
        .await
        .unwrap();
    let took = started.elapsed();
    assert_each_stored_once(&server.stop().await, &[document]);
    took
}

/// The endpoint's first address drops every packet: the client tries the next one, here of
/// the other family after Happy Eyeballs' 300 ms, and the call succeeds well within the
/// connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_first_address_of_the_other_family() {
    let server = CCore::start(&["--host", "::1"]).await;
    let took = call_past_a_black_hole(
        server,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        Duration::from_secs(5),
    )
    .await;
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// Two addresses of one family, the first black-holed: each gets its share of the connect
/// timeout, so the second is reached after half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_first_address_of_the_same_family() {
    let server = CCore::start(&[]).await;
    let took = call_past_a_black_hole(
        server,
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

/// A fresh directory with `count` documents as `enqueue-batch` reads them.
fn input_file(count: usize) -> (PathBuf, Vec<Uuid>) {
    let dir = std::env::temp_dir().join(format!("cloud-tasks-ccore-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let documents: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
    let lines: Vec<String> = documents
        .iter()
        .map(|id| serde_json::json!({"document_id": id, "filename": "scan.pdf"}).to_string())
        .collect();
    let path = dir.join("documents.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (path, documents)
}

/// `cloud-tasks enqueue-batch` with `args` against `server`: it must exit 0 with no failed
/// document listed.
async fn enqueue_batch(server: &CCore, input: &Path, args: &[&str]) {
    let output = cli_command(env!("CARGO_BIN_EXE_cloud-tasks"), &server.host())
        .current_dir(input.parent().unwrap())
        .arg("enqueue-batch")
        .args(args)
        .arg(input)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "failed documents listed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The acceptance run: 5,000 unnamed documents, 512 calls in flight, connections of
/// 100 streams retired every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_per_task_512_in_flight_while_connections_are_retired() {
    let server = CCore::start(&["--max-streams", "100", "--max-age-ms", "1000"]).await;
    let (input, documents) = input_file(5000);
    enqueue_batch(
        &server,
        &input,
        &["--per-task", "--concurrency", "512", "--no-ramp"],
    )
    .await;
    let stored = server.stop().await;
    assert_each_stored_once(&stored, &documents);
    assert_eq!(stored.already_exists, 0, "{stored:?}");
}

/// The same with de-duplicated batches of 100 (BatchCreateTasks), run twice: the second run
/// finds every document already enqueued and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_batch_deduplicated_batches_while_connections_are_retired() {
    let server = CCore::start(&["--max-streams", "100", "--max-age-ms", "1000"]).await;
    let (input, documents) = input_file(5000);
    let args = ["--dedupe", "--concurrency", "512", "--no-ramp"];
    enqueue_batch(&server, &input, &args).await;
    enqueue_batch(&server, &input, &args).await;
    let stored = server.stop().await;
    assert_each_stored_once(&stored, &documents);
    assert_eq!(stored.already_exists, 5000, "{stored:?}");
}

/// C-core's default PING policy, its 5 minutes scaled down to 1 s through its own option: a
/// PING less than 1 s after the previous one, with no HEADERS or DATA sent in between, is a
/// strike, and past 2 strikes the server sends GOAWAY `too_many_pings` and closes the
/// connection (failing the calls on it). Calls slower than half the keepalive timeout, in a
/// row and after idle gaps, each get a liveness PING; none is a strike, so every call
/// succeeds on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_pings_stay_within_the_default_ping_policy_of_c_core() {
    let server = CCore::start(&["--min-ping-interval-ms", "1000", "--delay-ms", "1200"]).await;
    let client = builder()
        .with_emulator_host(server.host())
        .with_keepalive_timeout(Duration::from_millis(400))
        .with_attempt_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut documents = Vec::new();
    for round in 0..5 {
        let document = Uuid::new_v4();
        if let Err(error) = client
            .create_document_processing_task(document, "slow.pdf")
            .await
        {
            panic!("call {round} failed: {error}");
        }
        documents.push(document);
        if round % 2 == 1 {
            // Idle: no PING is due on a connection without calls.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let stored = server.stop().await;
    assert_each_stored_once(&stored, &documents);
    assert_eq!(stored.peers, 1, "the connection was closed: {stored:?}");
}
