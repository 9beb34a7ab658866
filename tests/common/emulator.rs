//! The crates.io emulator (`cloud-tasks-emulator`) and the local servers it delivers to, as the
//! end-to-end tests start them: each on 127.0.0.1:0, in the test's own runtime.
//!
//! Not part of `common/mod.rs`: that module needs feature `testing` (it uses
//! `cloud_tasks::testing`), while `e2e.rs`, `e2e_cloud_run.rs` and `e2e_documents.rs` build under
//! feature `demo` alone. Each binary includes this file with
//! `#[path = "common/emulator.rs"] mod emulator;`.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;
use std::time::Duration;

use cloud_tasks::CloudTasksClient;
use tokio::net::TcpListener;

pub const PROJECT: &str = "e2e-project";
pub const LOCATION: &str = "europe-west1";
/// The account the client names, so the one the emulator's tokens are for.
pub const SERVICE_ACCOUNT: &str = "tasks-invoker@e2e-project.iam.gserviceaccount.com";

/// A running emulator holding one queue.
pub struct Emulator {
    pub addr: SocketAddr,
    /// The issuer of the tokens it signs: its own URL, where it also serves its keys.
    pub issuer: String,
    queue_path: String,
}

impl Emulator {
    /// Starts the emulator holding the one queue `queue` of [`PROJECT`] in [`LOCATION`], and a
    /// client that enqueues there tasks for `service_url`, as [`SERVICE_ACCOUNT`].
    pub async fn start(queue: &str, service_url: &str) -> (Self, CloudTasksClient) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let client = CloudTasksClient::builder()
            .with_project_id(PROJECT)
            .with_location(LOCATION)
            .with_queue(queue)
            .with_service_url(service_url)
            .with_service_account_email(SERVICE_ACCOUNT)
            .with_emulator_host(addr.to_string())
            .build()
            .unwrap();
        let queue_path = client.queue_path().to_owned();
        tokio::spawn(cloud_tasks_emulator::serve(
            listener,
            issuer.clone(),
            vec![queue_path.clone()],
        ));
        let emulator = Self {
            addr,
            issuer,
            queue_path,
        };
        (emulator, client)
    }

    /// Status of the emulator's wait-until-idle endpoint for the queue (204 once it holds no
    /// task), asked with `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> reqwest::StatusCode {
        let url = format!("http://{}/emulator/{}:waitIdle", self.addr, self.queue_path);
        reqwest::Client::new()
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .unwrap()
            .status()
    }
}

/// An HTTP server on 127.0.0.1:0, bound before it serves: its URL goes into the client (as the
/// service URL) before the router, which often holds that client, is built.
pub struct LocalServer {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl LocalServer {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Self { listener, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `router` for the rest of the test.
    pub fn serve(self, router: axum::Router) {
        tokio::spawn(async move { axum::serve(self.listener, router).await });
    }
}
