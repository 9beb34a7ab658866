//! End to end against the crates.io emulator, started by each test on 127.0.0.1:0: the
//! production client enqueues, the emulator delivers with a token it signed, and the example
//! backend's task route (`examples/backend/app.rs`) verifies and hands the delivery over.

#[path = "../examples/backend/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use cloud_tasks::receiver::{Delivery, OidcVerifier, Rejection, VerifyError};
use cloud_tasks::{CloudTasksClient, ProcessDocumentPayload, Uuid};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const QUEUE: &str = "document-processing";
const SERVICE_ACCOUNT: &str = "tasks-invoker@e2e-project.iam.gserviceaccount.com";
const WAIT: Duration = Duration::from_secs(15);

/// What the task route saw.
#[derive(Debug)]
enum Seen {
    Delivered(Box<Delivery<ProcessDocumentPayload>>),
    Rejected(Rejection),
}

struct Recorder {
    seen: mpsc::UnboundedSender<Seen>,
    fail_first_attempt: bool,
}

impl app::Processor for Recorder {
    async fn process(&self, delivery: Delivery<ProcessDocumentPayload>) -> Result<(), String> {
        let fail = self.fail_first_attempt && delivery.context.retry_count == 0;
        // The test may be over while the emulator still retries.
        self.seen.send(Seen::Delivered(Box::new(delivery))).ok();
        if fail {
            Err("failing the first attempt on purpose".to_owned())
        } else {
            Ok(())
        }
    }

    fn rejected(&self, rejection: &Rejection) {
        self.seen.send(Seen::Rejected(rejection.clone())).ok();
    }
}

struct Pipeline {
    client: CloudTasksClient,
    emulator: SocketAddr,
    issuer: String,
    handler: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Pipeline {
    /// Emulator, handler and client; `verifier` builds the handler's verifier from the
    /// audience (the client's service URL) and the emulator's issuer.
    async fn start(
        fail_first_attempt: bool,
        verifier: impl FnOnce(&str, &str) -> OidcVerifier,
    ) -> Self {
        let emulator_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator = emulator_listener.local_addr().unwrap();
        let handler_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler = handler_listener.local_addr().unwrap();
        let issuer = format!("http://{emulator}");

        let client = CloudTasksClient::builder()
            .with_project_id("e2e-project")
            .with_location("europe-west1")
            .with_queue(QUEUE)
            .with_service_url(format!("http://{handler}"))
            .with_service_account_email(SERVICE_ACCOUNT)
            .with_emulator_host(emulator.to_string())
            .build()
            .unwrap();
        tokio::spawn(cloud_tasks_emulator::serve(
            emulator_listener,
            issuer.clone(),
            vec![client.queue_path().to_owned()],
        ));

        let (sender, seen) = mpsc::unbounded_channel();
        let router = app::router(app::App {
            client: client.clone(),
            verifier: verifier(client.target().service_url(), &issuer),
            processor: Recorder {
                seen: sender,
                fail_first_attempt,
            },
        });
        tokio::spawn(async move { axum::serve(handler_listener, router).await });
        Self {
            client,
            emulator,
            issuer,
            handler,
            seen,
        }
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("the handler saw a request in time")
            .expect("the handler is running")
    }

    async fn next_delivery(&mut self) -> Delivery<ProcessDocumentPayload> {
        match self.next().await {
            Seen::Delivered(delivery) => *delivery,
            Seen::Rejected(rejection) => panic!("the handler refused a delivery: {rejection}"),
        }
    }

    async fn next_rejection(&mut self) -> Rejection {
        match self.next().await {
            Seen::Rejected(rejection) => rejection,
            Seen::Delivered(delivery) => panic!("expected a rejection, got {delivery:?}"),
        }
    }

    /// Status of the emulator's wait-until-idle endpoint for the queue.
    async fn wait_idle(&self) -> reqwest::StatusCode {
        let url = format!(
            "http://{}/emulator/{}:waitIdle",
            self.emulator,
            self.client.queue_path()
        );
        reqwest::Client::new()
            .get(url)
            .timeout(WAIT)
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn document(filename: &str) -> ProcessDocumentPayload {
    ProcessDocumentPayload {
        document_id: Uuid::new_v4(),
        filename: filename.to_owned(),
    }
}

/// The verifier a backend configures: the client's service URL as audience, our service
/// account, and the emulator as issuer.
fn right(audience: &str, issuer: &str) -> OidcVerifier {
    OidcVerifier::builder(audience, SERVICE_ACCOUNT)
        .with_issuer(issuer)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueued_document_is_delivered_and_verified() {
    let mut pipeline = Pipeline::start(false, right).await;
    let sent = document("résumé – Zoë.pdf");
    let enqueued = pipeline
        .client
        .create_document_processing_task(sent.document_id, &sent.filename)
        .await
        .unwrap();

    let delivery = pipeline.next_delivery().await;
    assert_eq!(delivery.payload, sent);
    assert_eq!(delivery.token.email, SERVICE_ACCOUNT);
    assert_eq!(delivery.token.issuer, pipeline.issuer);
    let context = &delivery.context;
    assert_eq!(context.queue_name, QUEUE);
    assert_eq!(
        pipeline.client.task_name(&context.task_name),
        enqueued.task_name()
    );
    assert_eq!(context.retry_count, 0);
    assert_eq!(context.execution_count, 0);
    assert_eq!(context.previous_response, None);
    let since_eta = SystemTime::now().duration_since(context.eta).unwrap();
    assert!(
        since_eta < WAIT,
        "ETA {:?} is the enqueue time",
        context.eta
    );
    assert_eq!(pipeline.wait_idle().await, reqwest::StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_attempt_is_retried_with_retry_headers() {
    let mut pipeline = Pipeline::start(true, right).await;
    let sent = document("report.pdf");
    pipeline
        .client
        .create_document_processing_task(sent.document_id, &sent.filename)
        .await
        .unwrap();

    let first = pipeline.next_delivery().await;
    assert_eq!(first.context.retry_count, 0);
    assert_eq!(first.context.previous_response, None);

    let retry = pipeline.next_delivery().await;
    assert_eq!(retry.payload, sent);
    assert_eq!(retry.context.task_name, first.context.task_name);
    assert_eq!(retry.context.retry_count, 1);
    // A 5xx answer is not an execution.
    assert_eq!(retry.context.execution_count, 0);
    assert_eq!(retry.context.previous_response, Some(500));
    assert!(retry.context.is_retry());
    assert_eq!(retry.token.email, SERVICE_ACCOUNT);
    assert_eq!(pipeline.wait_idle().await, reqwest::StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_route_enqueues_for_the_task_route() {
    let mut pipeline = Pipeline::start(false, right).await;
    let response = reqwest::Client::new()
        .post(format!("http://{}{}", pipeline.handler, app::UPLOAD_PATH))
        .body(r#"{"filename": "upload.pdf"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();

    let delivery = pipeline.next_delivery().await;
    assert_eq!(
        answer["document_id"],
        delivery.payload.document_id.to_string()
    );
    assert_eq!(
        answer["task"],
        pipeline.client.task_name(&delivery.context.task_name)
    );
    assert_eq!(delivery.payload.filename, "upload.pdf");
}

/// Enqueues one document and returns the handler's verdict on the emulator's token.
async fn rejection_of_emulator_token(
    verifier: impl FnOnce(&str, &str) -> OidcVerifier,
) -> VerifyError {
    let mut pipeline = Pipeline::start(false, verifier).await;
    pipeline
        .client
        .create_document_processing_task(Uuid::new_v4(), "x.pdf")
        .await
        .unwrap();
    match pipeline.next_rejection().await {
        Rejection::Token(error) => error,
        other => panic!("expected a token rejection, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_tokens_for_another_audience_are_rejected() {
    let error = rejection_of_emulator_token(|_, issuer| {
        OidcVerifier::builder("https://another-service.a.run.app", SERVICE_ACCOUNT)
            .with_issuer(issuer)
            .build()
    })
    .await;
    assert_eq!(error.check(), "aud", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_tokens_for_another_service_account_are_rejected() {
    let error = rejection_of_emulator_token(|audience, issuer| {
        OidcVerifier::builder(audience, "other@e2e-project.iam.gserviceaccount.com")
            .with_issuer(issuer)
            .build()
    })
    .await;
    assert_eq!(error.check(), "email", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_tokens_are_rejected_where_google_is_the_issuer() {
    let error = rejection_of_emulator_token(|audience, issuer| {
        // Google's issuers, with the emulator's keys so that only the issuer differs.
        OidcVerifier::builder(audience, SERVICE_ACCOUNT)
            .with_jwks_url(format!("{issuer}/jwks"))
            .build()
    })
    .await;
    assert_eq!(error.check(), "iss", "{error}");
}
