//! Values and local servers shared by the integration tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod python;
pub mod subscriber;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cloud_tasks::testing::MockCloudTasks;
use cloud_tasks::{ClientBuilder, CloudTasksClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const PROJECT: &str = "my-project";
pub const LOCATION: &str = "us-central1";
pub const QUEUE: &str = "document-processing";
pub const QUEUE_PATH: &str = "projects/my-project/locations/us-central1/queues/document-processing";
pub const SERVICE_URL: &str = "https://backend-abc123-uc.a.run.app";
pub const SERVICE_ACCOUNT: &str = "tasks-invoker@my-project.iam.gserviceaccount.com";

/// A builder with every target value set (the service URL with a trailing slash, which the
/// client must strip).
pub fn builder() -> ClientBuilder {
    CloudTasksClient::builder()
        .with_project_id(PROJECT)
        .with_location(LOCATION)
        .with_queue(QUEUE)
        .with_service_url(format!("{SERVICE_URL}/"))
        .with_service_account_email(SERVICE_ACCOUNT)
}

/// A plaintext mock server and a client talking to it in emulator mode.
pub async fn mock_and_client() -> (MockCloudTasks, CloudTasksClient) {
    let server = MockCloudTasks::start().await.expect("bind the mock server");
    let client = builder()
        .with_emulator_host(server.host())
        .build()
        .expect("valid client settings");
    (server, client)
}

/// The `cloud-tasks` binary at `binary` (`env!("CARGO_BIN_EXE_cloud-tasks")`) with a clean
/// environment holding the target settings and `CLOUD_TASKS_EMULATOR_HOST=emulator_host`.
pub fn cli_command(binary: &str, emulator_host: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .env("GCP_PROJECT_ID", PROJECT)
        .env("GCP_LOCATION", LOCATION)
        .env("CLOUD_TASKS_QUEUE", QUEUE)
        .env("CLOUD_RUN_SERVICE_URL", SERVICE_URL)
        .env("CLOUD_RUN_SERVICE_ACCOUNT", SERVICE_ACCOUNT)
        .env("CLOUD_TASKS_EMULATOR_HOST", emulator_host);
    command
}

/// Runs `command` to completion with `stdin` written to it (or no input at all), and returns
/// what it printed.
pub async fn output_with_stdin(
    mut command: tokio::process::Command,
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::process::Stdio;

    command
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

/// `127.0.0.1:port` where nothing listens (the port was free a moment ago).
pub fn unused_host() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A server that accepts connections and never answers, not even the HTTP/2 handshake: its
/// `host:port`, and the task to abort when done.
pub async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    (host, hold)
}

/// A local OAuth token endpoint that answers every request with `token`, or with `status` 400.
pub struct TokenEndpoint {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
}

impl TokenEndpoint {
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

pub async fn token_endpoint(token: Option<&'static str>) -> TokenEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // The request fits one read; its content does not matter here.
                let mut buffer = vec![0; 64 * 1024];
                if stream.read(&mut buffer).await.is_err() {
                    return;
                }
                let (status, body) = match token {
                    Some(token) => (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"{token}","expires_in":3600,"token_type":"Bearer"}}"#
                        ),
                    ),
                    None => (
                        "400 Bad Request",
                        r#"{"error":"invalid_grant","error_description":"Bad Request"}"#.to_owned(),
                    ),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await.ok();
                stream.shutdown().await.ok();
            });
        }
    });
    TokenEndpoint { url, requests }
}

/// An `authorized_user` credentials file (as `gcloud auth application-default login` writes)
/// whose token endpoint is `token_uri`.
pub fn authorized_user_json(token_uri: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "authorized_user",
        "client_id": "test-client.apps.googleusercontent.com",
        "client_secret": "test-client-secret",
        "refresh_token": "test-refresh-token",
        "token_uri": token_uri,
    })
}

/// Credentials that get their access token from `token_uri`.
pub fn credentials(token_uri: &str) -> cloud_tasks::Credentials {
    google_cloud_auth::credentials::user_account::Builder::new(authorized_user_json(token_uri))
        .build()
        .unwrap()
}

/// A TLS mock server, and a builder for it that trusts its certificate.
pub async fn tls_server() -> (MockCloudTasks, ClientBuilder) {
    let (cert, key) = self_signed_cert();
    let server = MockCloudTasks::start_tls(cert.as_bytes(), key.as_bytes())
        .await
        .unwrap();
    let builder = builder()
        .with_endpoint(server.uri())
        .with_ca_certificate(cert);
    (server, builder)
}

/// A TLS mock server and a client with credentials from `token_uri` that trusts its certificate.
pub async fn tls_server_and_client(token_uri: &str) -> (MockCloudTasks, CloudTasksClient) {
    let (server, builder) = tls_server().await;
    let client = builder
        .with_credentials(credentials(token_uri))
        .build()
        .unwrap();
    (server, client)
}

/// A self-signed certificate for 127.0.0.1: (certificate PEM, key PEM).
pub fn self_signed_cert() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A TCP proxy to a server whose connections can be frozen: a frozen connection stays open and
/// passes nothing on, like one behind a dropped NAT mapping or to a peer that vanished.
pub struct FreezingProxy {
    pub host: String,
    /// One flag per connection accepted so far.
    connections: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl FreezingProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = TcpStream::connect(target).await.unwrap();
                let frozen = Arc::new(AtomicBool::new(false));
                accepted.lock().unwrap().push(Arc::clone(&frozen));
                let (inbound_read, inbound_write) = inbound.into_split();
                let (outbound_read, outbound_write) = outbound.into_split();
                tokio::spawn(forward(inbound_read, outbound_write, Arc::clone(&frozen)));
                tokio::spawn(forward(outbound_read, inbound_write, frozen));
            }
        });
        Self { host, connections }
    }

    pub fn freeze_all(&self) {
        for frozen in self.connections.lock().unwrap().iter() {
            frozen.store(true, Ordering::SeqCst);
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.load(Ordering::SeqCst) {
            // Hold both sockets open and pass nothing on, ever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
