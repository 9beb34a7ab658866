//! The crate's own HTTP/2 connection (src/transport.rs): large messages under flow control,
//! TLS failures and connect timeouts reported as "nothing was sent" (and shared by the calls
//! that waited on them), bad endpoints and CA certificates refused when the client is built, a
//! connection that stops answering replaced while a slow one is kept.

mod common;

use std::time::{Duration, Instant};

use cloud_tasks::proto::{MessageType, Task};
use cloud_tasks::testing::{Fault, MockCloudTasks};
use cloud_tasks::{
    BatchOptions, CallOptions, ClientBuilder, CloudTasksClient, DocumentTask, Enqueued, Error,
    HttpTask, RetryPolicy, Uuid,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The largest body a task may have, less room for the rest of the task.
const LARGE_BODY: usize = 95 * 1024;

fn body_of(task: &Task) -> &[u8] {
    match &task.message_type {
        Some(MessageType::HttpRequest(http)) => &http.body,
        other => panic!("expected an HTTP task, got {other:?}"),
    }
}

/// A body larger than HTTP/2's default 64 KiB window arrives whole, and so does a batch of
/// 3 MB, larger than the server's connection window: the transport honours flow control.
#[tokio::test]
async fn messages_larger_than_the_flow_control_windows_arrive_whole() {
    let (server, client) = mock_and_client().await;
    let body: Vec<u8> = (0..LARGE_BODY).map(|i| (i % 251) as u8).collect();
    client
        .enqueue(
            HttpTask::post("/api/tasks/large").with_body(body.clone()),
            &CallOptions::new(),
        )
        .await
        .unwrap();
    let calls = server.create_task_calls();
    assert_eq!(body_of(calls[0].message.task.as_ref().unwrap()), body);

    let tasks = (0..100).map(|i| {
        let mut body = vec![b'x'; 30 * 1024];
        body[0] = i;
        HttpTask::post("/api/tasks/large").with_body(body)
    });
    let outcomes = client.enqueue_all(tasks, BatchOptions::default()).await;
    assert_eq!(outcomes.len(), 100);
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.as_ref().is_ok_and(Enqueued::was_created)),
        "{outcomes:?}"
    );
    let batches = server.batch_create_tasks_calls();
    assert_eq!(batches.len(), 1);
    let sent: Vec<u8> = batches[0]
        .message
        .requests
        .iter()
        .map(|request| body_of(request.task.as_ref().unwrap())[0])
        .collect();
    assert_eq!(sent, (0..100).collect::<Vec<u8>>());
}

/// A server whose certificate the client does not trust: a connection failure, nothing sent.
#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_error() {
    let tokens = token_endpoint(Some("token")).await;
    let (server, _) = tls_server().await;
    let (other_ca, _) = self_signed_cert();
    let client = builder()
        .with_endpoint(server.uri())
        .with_ca_certificate(other_ca)
        .with_credentials(credentials(&tokens.url))
        .build()
        .unwrap();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error.was_never_sent());
    let message = error.to_string();
    assert!(message.contains("certificate"), "{message}");
    assert!(server.tasks().is_empty());
}

/// A builder with credentials for a server that accepts TCP and never answers, not even the
/// TLS handshake; and the server's task, to abort when done.
async fn silent_tls_server() -> (ClientBuilder, JoinHandle<()>) {
    let tokens = token_endpoint(Some("token")).await;
    let (host, hold) = silent_server().await;
    let builder = builder()
        .with_endpoint(format!("https://{host}"))
        .with_credentials(credentials(&tokens.url));
    (builder, hold)
}

/// A client of [`silent_tls_server`] with a connect timeout of 300 ms.
async fn client_of_a_silent_tls_server() -> (CloudTasksClient, JoinHandle<()>) {
    let (builder, hold) = silent_tls_server().await;
    let client = builder
        .with_connect_timeout(Duration::from_millis(300))
        .with_total_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (client, hold)
}

/// A server that accepts TCP but never finishes the TLS handshake is given up on after the
/// connect timeout, well before the call's deadline.
#[tokio::test]
async fn a_handshake_that_never_finishes_is_bounded_by_the_connect_timeout() {
    let (client, hold) = client_of_a_silent_tls_server().await;
    let started = Instant::now();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error.was_never_sent());
    let message = error.to_string();
    assert!(
        message.contains("connecting took longer than 300ms"),
        "{message}"
    );
    hold.abort();
}

/// Calls that arrive while a connection attempt hangs share its failure, instead of each waiting
/// the connect timeout in turn behind it.
#[tokio::test]
async fn calls_waiting_on_a_hung_connection_attempt_share_its_failure() {
    let (client, hold) = client_of_a_silent_tls_server().await;
    let once = CallOptions::new().with_retry_policy(RetryPolicy::default().with_max_attempts(1));
    let started = Instant::now();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (client, once) = (client.clone(), once.clone());
            tokio::spawn(async move {
                client
                    .enqueue(DocumentTask::new(Uuid::new_v4(), "a.pdf"), &once)
                    .await
            })
        })
        .collect();
    for call in calls {
        let error = call.await.unwrap().unwrap_err();
        assert!(matches!(error, Error::Connect { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("connecting took longer than 300ms"),
            "{message}"
        );
    }
    // In turn, the eighth call would have failed after 8 x 300 ms.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    hold.abort();
}

#[tokio::test]
async fn a_malformed_endpoint_is_refused_when_building() {
    let error = builder()
        .with_endpoint("https://cloud tasks")
        .with_credentials(credentials("http://127.0.0.1:1/token"))
        .build()
        .unwrap_err();
    assert!(error.is_config(), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("https://cloud tasks"), "{message}");
    assert!(message.contains("not a valid endpoint URI"), "{message}");
}

#[tokio::test]
async fn a_ca_certificate_that_is_not_pem_is_refused_when_building() {
    let error = builder()
        .with_endpoint("https://127.0.0.1:1")
        .with_ca_certificate("not a certificate")
        .with_credentials(credentials("http://127.0.0.1:1/token"))
        .build()
        .unwrap_err();
    assert!(error.is_config(), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("no CERTIFICATE block"), "{message}");
}

/// A client can be built outside a runtime and used in one; when its runtime is gone, a client
/// used from a new runtime connects again instead of failing on the dead connection.
#[test]
fn a_client_outlives_the_runtime_of_its_connection() {
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = server_runtime
        .block_on(cloud_tasks::testing::MockCloudTasks::start())
        .unwrap();
    let client = builder().with_emulator_host(server.host()).build().unwrap();
    for _ in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(client.create_document_processing_task(Uuid::new_v4(), "a.pdf"))
            .unwrap();
    }
    assert_eq!(server.tasks().len(), 2);
    assert_eq!(server.connections(), 2, "one connection per runtime");
}

/// A mock server behind a [`FreezingProxy`], and a client through the proxy with these deadlines
/// whose connection was made by one successful call and then frozen.
async fn client_on_a_frozen_connection(
    attempt_timeout: Duration,
    ping_timeout: Duration,
) -> (MockCloudTasks, FreezingProxy, CloudTasksClient) {
    let server = MockCloudTasks::start().await.unwrap();
    let proxy = FreezingProxy::start(server.addr()).await;
    let client = builder()
        .with_emulator_host(&proxy.host)
        .with_attempt_timeout(attempt_timeout)
        .with_keepalive_timeout(ping_timeout)
        .with_total_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client
        .create_document_processing_task(Uuid::new_v4(), "before.pdf")
        .await
        .unwrap();
    proxy.freeze_all();
    (server, proxy, client)
}

/// A connection that stops passing anything on without closing, while a call waits on it, is
/// found out by the liveness PING (sent after half the keepalive timeout without a frame) and
/// closed when the PING goes unanswered: the call fails then ("may exist": its request was
/// written), not at its 3 s deadline, and the next call goes to a new connection at once.
#[tokio::test]
async fn a_connection_that_stops_answering_under_a_call_is_closed_within_the_keepalive_timeout() {
    let (server, proxy, client) =
        client_on_a_frozen_connection(Duration::from_secs(3), Duration::from_millis(400)).await;
    let started = Instant::now();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "frozen.pdf")
        .await
        .unwrap_err();
    let failed_after = started.elapsed();
    assert!(error.task_may_exist(), "{error:?}");
    assert!(!error.is_timeout(), "{error:?}");
    assert!(
        failed_after < Duration::from_millis(1500),
        "the call waited past the keepalive timeout: {failed_after:?}"
    );

    let started = Instant::now();
    client
        .create_document_processing_task(Uuid::new_v4(), "after.pdf")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.connections(),
        2,
        "a new connection replaced the frozen one"
    );
    assert_eq!(server.tasks().len(), 2);
}

/// A de-duplicated enqueue caught on a connection that stops answering is retried, and once
/// the connection is closed the retry goes to a new one: the document is enqueued once.
#[tokio::test]
async fn a_deduplicated_enqueue_outlives_a_connection_that_stops_answering() {
    let (server, proxy, client) =
        client_on_a_frozen_connection(Duration::from_millis(300), Duration::from_millis(200)).await;
    let document = DocumentTask::new(Uuid::new_v4(), "report.pdf").deduplicated();
    let task_name = client.task_name(document.task_id().unwrap());
    let enqueued = client.enqueue(document, &CallOptions::new()).await.unwrap();
    assert!(enqueued.was_created(), "{enqueued:?}");
    assert_eq!(enqueued.task_name(), task_name);
    assert_eq!(proxy.connections(), 2);
    let stored = server.tasks();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored.iter().filter(|task| task.name == task_name).count(),
        1
    );
}

/// A call given up before half the keepalive timeout leaves no call outstanding, so no PING
/// goes out: frequent quick cancellations must not flood the server with PINGs.
#[tokio::test]
async fn a_call_given_up_quickly_does_not_check_the_connection() {
    let (_server, proxy, client) =
        client_on_a_frozen_connection(Duration::from_millis(100), Duration::from_millis(300)).await;
    for _ in 0..2 {
        let error = client
            .create_document_processing_task(Uuid::new_v4(), "frozen.pdf")
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        // Longer than a PING's timeout: a check would have replaced the connection by now.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(proxy.connections(), 1, "no check, so no new connection");
}

/// A server that is only slow answers the PING, and keeps its connection.
#[tokio::test]
async fn a_slow_server_keeps_its_connection() {
    let (server, _) = mock_and_client().await;
    let client = builder()
        .with_emulator_host(server.host())
        // The call must wait at least the PING's timeout to be checked.
        .with_attempt_timeout(Duration::from_millis(1600))
        .with_keepalive_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    client
        .create_document_processing_task(Uuid::new_v4(), "before.pdf")
        .await
        .unwrap();
    server.push_fault(Fault::Delay(Duration::from_secs(4)));
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "slow.pdf")
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    // Longer than the PING's timeout: had the PING gone unanswered, the connection would be
    // closed by now.
    tokio::time::sleep(Duration::from_millis(1800)).await;

    client
        .create_document_processing_task(Uuid::new_v4(), "after.pdf")
        .await
        .unwrap();
    assert_eq!(
        server.connections(),
        1,
        "the slow server's connection was kept"
    );
}

/// The server side of one HTTP/2 connection, driven frame by frame by a test: a peer that is
/// not h2, whose every frame the test chooses.
struct HandDrivenPeer {
    frames: tokio::sync::mpsc::UnboundedReceiver<Frame>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    reader: JoinHandle<()>,
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const DATA: u8 = 0x0;
const ACK: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A SETTINGS frame, with MAX_CONCURRENT_STREAMS if given.
fn settings(max_streams: Option<u32>) -> Vec<u8> {
    let payload = match max_streams {
        Some(max) => [&[0, 3][..], &max.to_be_bytes()].concat(),
        None => Vec::new(),
    };
    frame(SETTINGS, 0, 0, &payload)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut bytes = vec![length[1], length[2], length[3], kind, flags];
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// An HPACK header block of literal fields, neither indexed nor Huffman-coded.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend(value.as_bytes());
    }
    block
}

impl HandDrivenPeer {
    async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the client connects within 5 s")
            .unwrap();
        let (mut reader, writer) = stream.into_split();
        let mut preface = [0; 24];
        reader.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let (sender, frames) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let mut header = [0; 9];
                if reader.read_exact(&mut header).await.is_err() {
                    return;
                }
                let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                let mut payload = vec![0; length as usize];
                if reader.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
                let frame = Frame {
                    kind: header[3],
                    flags: header[4],
                    stream: stream & 0x7fff_ffff,
                };
                if sender.send(frame).is_err() {
                    return;
                }
            }
        });
        Self {
            frames,
            writer,
            reader,
        }
    }

    /// The frames the client sends within `period`.
    async fn frames_for(&mut self, period: Duration) -> Vec<Frame> {
        let until = tokio::time::Instant::now() + period;
        let mut received = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout_at(until, self.frames.recv()).await {
            received.push(frame);
        }
        received
    }

    /// The streams of the next `count` requests (their HEADERS frames).
    async fn requests(&mut self, count: usize) -> Vec<u32> {
        let mut streams = Vec::new();
        while streams.len() < count {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.frames.recv())
                .await
                .expect("the client sent its requests")
                .expect("the connection is open");
            if frame.kind == HEADERS {
                streams.push(frame.stream);
            }
        }
        streams
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// This side's SETTINGS, with MAX_CONCURRENT_STREAMS if given, and the ACK of the client's.
    async fn settle(&mut self, max_streams: Option<u32>) {
        let mut bytes = settings(max_streams);
        bytes.extend(frame(SETTINGS, ACK, 0, &[]));
        self.send(&bytes).await;
    }

    /// A gRPC answer on `stream`: the task `name` and status OK.
    async fn answer(&mut self, stream: u32, name: &str) {
        use prost::Message;

        let message = Task {
            name: name.to_owned(),
            ..Task::default()
        }
        .encode_to_vec();
        let mut grpc = vec![0];
        grpc.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
        grpc.extend(message);
        let headers = header_block(&[(":status", "200"), ("content-type", "application/grpc")]);
        let mut bytes = frame(HEADERS, END_HEADERS, stream, &headers);
        bytes.extend(frame(DATA, 0, stream, &grpc));
        let trailers = header_block(&[("grpc-status", "0")]);
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &trailers));
        self.send(&bytes).await;
    }
}

impl Drop for HandDrivenPeer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// `count` unnamed calls made at once.
fn calls_at_once(
    client: &CloudTasksClient,
    count: usize,
) -> Vec<JoinHandle<Result<Enqueued, Error>>> {
    (0..count)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .create_document_processing_task(Uuid::new_v4(), "a.pdf")
                    .await
            })
        })
        .collect()
}

/// `count` unnamed calls made at once by a client of a [`HandDrivenPeer`] whose connection is
/// settled (SETTINGS sent, PING answered); the listener, for a next connection.
async fn calls_to_a_hand_driven_peer(
    count: usize,
) -> (
    TcpListener,
    Vec<JoinHandle<Result<Enqueued, Error>>>,
    HandDrivenPeer,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = builder()
        .with_emulator_host(listener.local_addr().unwrap().to_string())
        .build()
        .unwrap();
    let calls = calls_at_once(&client, count);
    let mut peer = HandDrivenPeer::accept(&listener).await;
    peer.settle(None).await;
    (listener, calls, peer)
}

/// The first call goes out at once, with the connection preface (as tonic's channel sends it:
/// no round trip waiting for the server); the others wait for the server's SETTINGS, then
/// open no more than its limit: a server that admits 5 streams sees 1, then 5, of 300 calls
/// made at once.
#[tokio::test]
async fn one_stream_before_the_server_settings_then_their_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = builder()
        .with_emulator_host(listener.local_addr().unwrap().to_string())
        .with_max_connections(1)
        .with_connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let calls = calls_at_once(&client, 300);
    let mut peer = HandDrivenPeer::accept(&listener).await;
    let count = |frames: &[Frame], kind: u8| frames.iter().filter(|f| f.kind == kind).count();

    let before = peer.frames_for(Duration::from_millis(500)).await;
    assert_eq!(count(&before, HEADERS), 1, "streams opened before SETTINGS");
    assert_eq!(
        count(&before, PING),
        0,
        "no PING round trip before the first call"
    );
    peer.settle(Some(5)).await;

    let after = peer.frames_for(Duration::from_millis(500)).await;
    assert_eq!(
        count(&after, HEADERS),
        4,
        "streams opened once the limit was known"
    );
    for call in calls {
        call.abort();
    }
}

/// A server that announces no stream limit gets at most 100 streams on a connection, as
/// Google's front ends admit (h2 alone would open all 150).
#[tokio::test]
async fn at_most_100_streams_when_the_server_announces_no_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = builder()
        .with_emulator_host(listener.local_addr().unwrap().to_string())
        .with_max_connections(1)
        .build()
        .unwrap();
    let calls = calls_at_once(&client, 150);
    let mut peer = HandDrivenPeer::accept(&listener).await;
    peer.settle(None).await;
    let frames = peer.frames_for(Duration::from_millis(1000)).await;
    let streams = frames.iter().filter(|f| f.kind == HEADERS).count();
    assert_eq!(streams, 100, "streams opened on one connection");
    for call in calls {
        call.abort();
    }
}

/// A GOAWAY whose last-stream-id is below some of the calls in flight: HTTP/2 guarantees the
/// server did not process those, so they are sent again at once on a new connection, unnamed
/// as they are, while the call at or below it gets its answer on the old connection. Three
/// calls, three tasks, no error.
#[tokio::test]
async fn streams_above_a_goaway_are_sent_again_on_a_new_connection() {
    let (listener, calls, mut old) = calls_to_a_hand_driven_peer(3).await;
    let streams = old.requests(3).await;
    let processed = *streams.iter().min().unwrap();
    let mut goaway = processed.to_be_bytes().to_vec();
    goaway.extend(0_u32.to_be_bytes()); // NO_ERROR
    old.send(&frame(GOAWAY, 0, 0, &goaway)).await;
    old.answer(processed, "on-the-old-connection").await;

    let mut new = HandDrivenPeer::accept(&listener).await;
    new.settle(None).await;
    let resent = new.requests(2).await;
    for (index, stream) in resent.iter().enumerate() {
        new.answer(*stream, &format!("resent-{index}")).await;
    }

    let mut names = Vec::new();
    for call in calls {
        let enqueued = call.await.unwrap().expect("no call fails");
        names.push(enqueued.task_name().to_owned());
    }
    names.sort();
    assert_eq!(names, ["on-the-old-connection", "resent-0", "resent-1"]);
}

/// An attempt whose deadline passes while the connection is still being made sent nothing: it
/// is a timeout that says so, not "may exist", and the unnamed task may be sent again.
#[tokio::test]
async fn an_attempt_that_times_out_while_connecting_sent_nothing() {
    let (builder, hold) = silent_tls_server().await;
    let client = builder
        .with_connect_timeout(Duration::from_secs(5))
        .with_attempt_timeout(Duration::from_millis(200))
        .with_total_timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Timeout {
                request_sent: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.task_may_exist(), "{error}");
    assert!(error.was_never_sent());
    assert!(error.to_string().contains("nothing was sent"), "{error}");
    hold.abort();
}

/// A TLS server that does not agree to HTTP/2 (an HTTP/1.1 proxy): a connect error that says
/// so, rather than an HTTP/2 error on the first frame.
#[tokio::test]
async fn a_tls_server_without_http2_is_a_clear_connect_error() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (cert, key) = self_signed_cert();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // No ALPN protocols: the handshake completes with none agreed, as with an HTTP/1.1 proxy.
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let serve = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(tls) = acceptor.accept(tcp).await {
                open.push(tls);
            }
        }
    });
    let tokens = token_endpoint(Some("token")).await;
    let client = builder()
        .with_endpoint(format!("https://{host}"))
        .with_ca_certificate(cert)
        .with_credentials(credentials(&tokens.url))
        .with_retry_policy(RetryPolicy::never())
        .build()
        .unwrap();
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "a.pdf")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("did not agree to HTTP/2") && message.contains("ALPN: none"),
        "{message}"
    );
    serve.abort();
}

/// A stream the server resets with REFUSED_STREAM was not processed: the unnamed call is sent
/// again at once and succeeds; the other call is answered as usual. Two calls, two tasks.
#[tokio::test]
async fn a_refused_stream_is_sent_again() {
    const RST_STREAM: u8 = 0x3;
    const REFUSED_STREAM: u32 = 0x7;
    let (_listener, calls, mut peer) = calls_to_a_hand_driven_peer(2).await;
    let streams = peer.requests(2).await;
    peer.send(&frame(
        RST_STREAM,
        0,
        streams[0],
        &REFUSED_STREAM.to_be_bytes(),
    ))
    .await;
    peer.answer(streams[1], "answered").await;
    let resent = peer.requests(1).await;
    peer.answer(resent[0], "resent").await;

    let mut names = Vec::new();
    for call in calls {
        names.push(
            call.await
                .unwrap()
                .expect("no call fails")
                .task_name()
                .to_owned(),
        );
    }
    names.sort();
    assert_eq!(names, ["answered", "resent"]);
}

/// A listener for hand-driven peers, and a client of it with at most `max_connections`.
async fn hand_driven_endpoint(
    max_connections: usize,
    keepalive_timeout: Duration,
) -> (TcpListener, CloudTasksClient) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = builder()
        .with_emulator_host(listener.local_addr().unwrap().to_string())
        .with_max_connections(max_connections)
        .with_keepalive_timeout(keepalive_timeout)
        .build()
        .unwrap();
    (listener, client)
}

/// A GOAWAY frame with this last-stream-id and NO_ERROR.
fn goaway(last_stream: u32) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend(0_u32.to_be_bytes());
    frame(GOAWAY, 0, 0, &payload)
}

/// Wake-up: a later SETTINGS that raises the stream limit lets the calls waiting for room go
/// at once, on the same connection, instead of at their deadline (20 s).
#[tokio::test]
async fn a_settings_frame_raising_the_limit_wakes_the_waiting_calls() {
    let (listener, client) = hand_driven_endpoint(1, Duration::from_secs(20)).await;
    let calls = calls_at_once(&client, 3);
    let mut peer = HandDrivenPeer::accept(&listener).await;
    peer.settle(Some(1)).await;
    let first = peer.requests(1).await;
    let waiting = peer.frames_for(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|frame| frame.kind != HEADERS),
        "a stream beyond the limit of 1: {waiting:?}"
    );
    peer.send(&settings(Some(10))).await;
    let mut streams = first;
    streams.extend(peer.requests(2).await);
    for (index, stream) in streams.iter().enumerate() {
        peer.answer(*stream, &format!("task-{index}")).await;
    }
    for call in calls {
        call.await.unwrap().expect("every call is answered");
    }
}

/// Wake-up: a GOAWAY on a connection that still has a call makes the call waiting for room
/// open a new connection at once, instead of sleeping until that call ends; the call below
/// the GOAWAY's last-stream-id is answered on the old connection.
#[tokio::test]
async fn a_goaway_wakes_the_waiting_calls() {
    let (listener, client) = hand_driven_endpoint(1, Duration::from_secs(20)).await;
    let calls = calls_at_once(&client, 2);
    let mut old = HandDrivenPeer::accept(&listener).await;
    old.settle(Some(1)).await;
    let processing = old.requests(1).await[0];
    old.send(&goaway(processing)).await;

    let mut new = HandDrivenPeer::accept(&listener).await;
    new.settle(None).await;
    let resent = new.requests(1).await[0];
    new.answer(resent, "on-the-new-connection").await;
    old.answer(processing, "on-the-old-connection").await;
    let mut names = Vec::new();
    for call in calls {
        names.push(call.await.unwrap().unwrap().task_name().to_owned());
    }
    names.sort();
    assert_eq!(names, ["on-the-new-connection", "on-the-old-connection"]);
}

/// Wake-up: a connection that closes while a call waits for room on it (here the server
/// admits no stream, so no call of its own ends) makes the call connect again at once.
#[tokio::test]
async fn a_closed_connection_wakes_the_waiting_calls() {
    let (listener, client) = hand_driven_endpoint(1, Duration::from_secs(20)).await;
    let mut calls = calls_at_once(&client, 1);
    let mut first = HandDrivenPeer::accept(&listener).await;
    let stream = first.requests(1).await[0];
    // No stream admitted, and the one sent before the SETTINGS refused (not processed).
    first.settle(Some(0)).await;
    const RST_STREAM: u8 = 0x3;
    const REFUSED_STREAM: u32 = 0x7;
    first
        .send(&frame(RST_STREAM, 0, stream, &REFUSED_STREAM.to_be_bytes()))
        .await;
    let waiting = first.frames_for(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|frame| frame.kind != HEADERS),
        "a stream on a connection that admits none: {waiting:?}"
    );
    drop(first);

    let mut second = HandDrivenPeer::accept(&listener).await;
    second.settle(None).await;
    let stream = second.requests(1).await[0];
    second.answer(stream, "after-the-close").await;
    let enqueued = calls.remove(0).await.unwrap().unwrap();
    assert_eq!(enqueued.task_name(), "after-the-close");
}

/// A server that accepts and sends GOAWAY at once (its call was above the last-stream-id, so
/// not processed) is not reconnected to at once: the next connection comes after the
/// reconnect delay (1 s), and the end of the delay wakes the waiting call, which does not
/// sleep until its deadline (20 s).
#[tokio::test]
async fn a_server_that_goes_away_at_once_is_reconnected_to_after_the_delay() {
    let (listener, client) = hand_driven_endpoint(8, Duration::from_secs(20)).await;
    let mut calls = calls_at_once(&client, 1);
    let mut first = HandDrivenPeer::accept(&listener).await;
    let mut bytes = settings(None);
    bytes.extend(goaway(0));
    first.send(&bytes).await;
    let went_away = Instant::now();

    let mut second = HandDrivenPeer::accept(&listener).await;
    let reconnected_after = went_away.elapsed();
    assert!(
        reconnected_after >= Duration::from_millis(900),
        "reconnected without backing off: {reconnected_after:?}"
    );
    assert!(
        reconnected_after < Duration::from_millis(2500),
        "the waiting call slept past the reconnect delay: {reconnected_after:?}"
    );
    second.settle(None).await;
    let stream = second.requests(1).await[0];
    second.answer(stream, "after-the-delay").await;
    let enqueued = calls.remove(0).await.unwrap().unwrap();
    assert_eq!(enqueued.task_name(), "after-the-delay");
}

/// A connection whose calls have received nothing for half the keepalive timeout gets a PING,
/// and until it is answered takes no new call: the next call goes to a new connection.
#[tokio::test]
async fn no_new_call_on_a_connection_with_a_ping_unanswered() {
    let (listener, client) = hand_driven_endpoint(2, Duration::from_secs(2)).await;
    let _stuck = calls_at_once(&client, 1);
    let mut silent = HandDrivenPeer::accept(&listener).await;
    silent.settle(None).await;
    silent.requests(1).await;
    let mut pinged = false;
    // The PING is due after 1 s; the rest of the window is for a loaded machine.
    while !pinged {
        let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_secs(5), silent.frames.recv()).await
        else {
            break;
        };
        pinged = frame.kind == PING && frame.flags == 0;
    }
    assert!(
        pinged,
        "no PING after 1 s without a frame while a call waits"
    );

    let mut next = calls_at_once(&client, 1);
    let mut fresh = HandDrivenPeer::accept(&listener).await;
    fresh.settle(None).await;
    let stream = fresh.requests(1).await[0];
    fresh.answer(stream, "on-a-new-connection").await;
    let enqueued = next.remove(0).await.unwrap().unwrap();
    assert_eq!(enqueued.task_name(), "on-a-new-connection");
    let on_the_silent_one = silent.frames_for(Duration::from_millis(100)).await;
    assert!(
        on_the_silent_one.iter().all(|frame| frame.kind != HEADERS),
        "a call went to the connection with a PING unanswered"
    );
}

/// The run: 1,000 de-duplicated documents at 16 in flight, and the proxy silently
/// drops its connection (no FIN, no RST) while calls are on it. The calls stuck on it fail
/// within the keepalive timeout (1 s here), are sent again on a new connection, and the run
/// finishes a few seconds after the drop, not after the attempt timeout (20 s); each document
/// is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outlives_its_connection_dropped_silently_under_traffic() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let server = MockCloudTasks::start().await.unwrap();
    let proxy = FreezingProxy::start(server.addr()).await;
    let keepalive_timeout = Duration::from_secs(1);
    let client = builder()
        .with_emulator_host(&proxy.host)
        .with_keepalive_timeout(keepalive_timeout)
        .build()
        .unwrap();
    let documents: Arc<Vec<Uuid>> = Arc::new((0..1000).map(|_| Uuid::new_v4()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, documents, next) =
                (client.clone(), Arc::clone(&documents), Arc::clone(&next));
            tokio::spawn(async move {
                while let Some(&id) = documents.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let task = DocumentTask::new(id, "scan.pdf").deduplicated();
                    if let Err(error) = client.enqueue(task, &CallOptions::new()).await {
                        panic!("{id}: {error}");
                    }
                }
            })
        })
        .collect();
    // Late in the run, so that what follows the drop is mostly the drop's cost rather than the
    // rest of the work.
    while next.load(Ordering::Relaxed) < 900 {
        tokio::task::yield_now().await;
    }
    proxy.freeze_all();
    let dropped = Instant::now();
    for worker in workers {
        worker.await.unwrap();
    }
    let took = dropped.elapsed();
    assert!(
        took < keepalive_timeout + Duration::from_secs(3),
        "the run took {took:?} after the drop"
    );
    assert_eq!(proxy.connections(), 2, "one new connection after the drop");
    let stored = server.tasks();
    assert_eq!(stored.len(), documents.len());
    let names: std::collections::HashSet<_> = stored.iter().map(|task| &task.name).collect();
    assert_eq!(names.len(), documents.len(), "a document stored twice");
}
