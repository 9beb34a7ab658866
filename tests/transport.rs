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

/// A connection that stops passing anything on without closing is found out by the call that
/// times out on it (a PING it does not answer) and replaced: the next call succeeds on a new
/// connection instead of waiting on the dead one.
#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced() {
    let (server, proxy, client) =
        client_on_a_frozen_connection(Duration::from_millis(300), Duration::from_millis(200)).await;
    let error = client
        .create_document_processing_task(Uuid::new_v4(), "frozen.pdf")
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");

    // Once the PING's timeout has passed, the frozen connection is closed
    // and the next call goes to a new one. Calls made before that still go to the frozen
    // connection and fail (a timeout, or UNAVAILABLE when the check closes it under them);
    // without the check, every call would time out on it.
    let started = Instant::now();
    while let Err(error) = client
        .create_document_processing_task(Uuid::new_v4(), "after.pdf")
        .await
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the frozen connection was not replaced: {error:?}"
        );
    }
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

/// A call given up sooner than a PING may take says nothing about the connection and sends no
/// PING: frequent quick cancellations must not flood the server with PINGs.
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

/// The client opens no stream before the server's SETTINGS arrive (it PINGs and waits for
/// the answer, which comes after them), then no more than the server's limit: a server that
/// admits 5 streams sees 5 of 300 calls made at once.
#[tokio::test]
async fn streams_wait_for_the_server_settings_and_respect_their_limit() {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = builder()
        .with_emulator_host(listener.local_addr().unwrap().to_string())
        .with_max_connections(1)
        .with_connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let calls: Vec<_> = (0..300)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .create_document_processing_task(Uuid::new_v4(), "a.pdf")
                    .await
            })
        })
        .collect();
    let (stream, _) = listener.accept().await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let mut preface = [0; 24];
    reader.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    // Every frame the client sends: (type, flags, payload).
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
    let read_frames = tokio::spawn(async move {
        loop {
            let mut header = [0; 9];
            if reader.read_exact(&mut header).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0; length];
            if reader.read_exact(&mut payload).await.is_err() {
                return;
            }
            if frames_tx.send((header[3], header[4], payload)).is_err() {
                return;
            }
        }
    });
    async fn frames_for(
        frames: &mut tokio::sync::mpsc::UnboundedReceiver<(u8, u8, Vec<u8>)>,
        period: Duration,
    ) -> Vec<(u8, u8, Vec<u8>)> {
        let until = tokio::time::Instant::now() + period;
        let mut received = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout_at(until, frames.recv()).await {
            received.push(frame);
        }
        received
    }
    let count = |frames: &[(u8, u8, Vec<u8>)], kind: u8| {
        frames.iter().filter(|(frame, ..)| *frame == kind).count()
    };

    let before = frames_for(&mut frames, Duration::from_millis(500)).await;
    assert_eq!(count(&before, HEADERS), 0, "streams opened before SETTINGS");
    let Some((_, _, ping)) = before
        .iter()
        .find(|(kind, flags, _)| *kind == PING && *flags == 0)
    else {
        panic!("the client sent no PING: {before:?}");
    };
    // SETTINGS with MAX_CONCURRENT_STREAMS (0x3) = 5, the ACK of the client's SETTINGS, and
    // the answer to its PING.
    let mut answer = vec![0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 5];
    answer.extend([0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]);
    answer.extend([0, 0, 8, PING, ACK, 0, 0, 0, 0]);
    answer.extend(ping);
    writer.write_all(&answer).await.unwrap();

    let after = frames_for(&mut frames, Duration::from_millis(500)).await;
    assert_eq!(
        count(&after, HEADERS),
        5,
        "streams opened once the limit was known"
    );
    for call in calls {
        call.abort();
    }
    read_frames.abort();
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
