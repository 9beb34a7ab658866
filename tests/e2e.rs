//! End to end against the crates.io emulator, started by each test on 127.0.0.1:0: the
//! production client enqueues, the emulator delivers with a token it signed, and the example
//! backend's task route (`examples/backend/app.rs`) verifies and hands the delivery over.

#[path = "../examples/backend/app.rs"]
mod app;
#[path = "common/emulator.rs"]
mod emulator;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cloud_tasks::receiver::{
    CloudTask, Delivery, OidcVerifier, Rejection, TaskOutcome, VerifyError,
};
use cloud_tasks::{CloudTasksClient, ProcessDocumentPayload, Uuid};
use emulator::{Emulator, LocalServer, SERVICE_ACCOUNT};
use tokio::sync::{Notify, mpsc};

const QUEUE: &str = "document-processing";
const WAIT: Duration = Duration::from_secs(15);

/// What the task route saw.
#[derive(Debug)]
enum Seen {
    Delivered(Box<Delivery<ProcessDocumentPayload>>),
    Rejected(Rejection),
}

/// How the handler behaves besides recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    /// The processor asks for a retry on the first attempt.
    RetryFirstAttempt,
    /// The work is done, but the first answer of the task route is lost on its way back (a 500
    /// in its place), as when an instance dies after committing: Cloud Tasks delivers again.
    LoseFirstAnswer,
    /// The first time, the work waits for [`Pipeline::release`].
    HoldFirstWork,
}

struct Recorder {
    seen: mpsc::UnboundedSender<Seen>,
    behaviour: Behaviour,
    /// Times the processor did the work.
    work: Arc<AtomicUsize>,
    release: Arc<Notify>,
}

impl app::Processor for Recorder {
    async fn process(&self, task: &CloudTask<ProcessDocumentPayload>) -> TaskOutcome {
        let retry = self.behaviour == Behaviour::RetryFirstAttempt && !task.context.is_retry();
        // The test may be over while the emulator still retries.
        self.seen
            .send(Seen::Delivered(Box::new(task.0.clone())))
            .ok();
        if retry {
            return TaskOutcome::retry_later();
        }
        if self.behaviour == Behaviour::HoldFirstWork && self.work.load(Ordering::SeqCst) == 0 {
            self.release.notified().await;
        }
        self.work.fetch_add(1, Ordering::SeqCst);
        TaskOutcome::Done
    }
}

struct Pipeline {
    client: CloudTasksClient,
    emulator: Emulator,
    handler: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    work: Arc<AtomicUsize>,
    release: Arc<Notify>,
    /// Every status the task route answered, in order.
    answers: mpsc::UnboundedReceiver<StatusCode>,
}

impl Pipeline {
    /// Emulator, handler and client; `verifier` builds the handler's verifier from the
    /// audience (the client's service URL) and the emulator's issuer.
    async fn start(
        behaviour: Behaviour,
        verifier: impl FnOnce(&str, &str) -> OidcVerifier,
    ) -> Self {
        let server = LocalServer::bind().await;
        let handler = server.addr;
        let (emulator, client) = Emulator::start(QUEUE, &server.url()).await;

        let (sender, seen) = mpsc::unbounded_channel();
        let (answered, answers) = mpsc::unbounded_channel();
        let work = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let rejections = sender.clone();
        let lose_next_answer = Arc::new(AtomicBool::new(behaviour == Behaviour::LoseFirstAnswer));
        let router = app::router(app::App {
            client: client.clone(),
            verifier: verifier(client.target().service_url(), &emulator.issuer),
            processor: Arc::new(Recorder {
                seen: sender,
                behaviour,
                work: work.clone(),
                release: release.clone(),
            }),
            documents: app::Documents::default(),
        })
        .layer(axum::middleware::map_response(move |response: Response| {
            if let Some(rejection) = response.extensions().get::<Rejection>() {
                rejections.send(Seen::Rejected(rejection.clone())).ok();
            }
            let response = if response.extensions().get::<TaskOutcome>().is_some()
                && lose_next_answer.swap(false, Ordering::SeqCst)
            {
                (StatusCode::INTERNAL_SERVER_ERROR, "answer lost").into_response()
            } else {
                response
            };
            answered.send(response.status()).ok();
            std::future::ready(response)
        }));
        server.serve(router);
        Self {
            client,
            emulator,
            handler,
            seen,
            work,
            release,
            answers,
        }
    }

    async fn next_answer(&mut self) -> StatusCode {
        tokio::time::timeout(WAIT, self.answers.recv())
            .await
            .expect("the handler answered in time")
            .expect("the handler is running")
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
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueued_document_is_delivered_and_verified() {
    let mut pipeline = Pipeline::start(Behaviour::Succeed, right).await;
    let sent = document("résumé – Zoë.pdf");
    let enqueued = pipeline
        .client
        .create_document_processing_task(sent.document_id, &sent.filename)
        .await
        .unwrap();

    let delivery = pipeline.next_delivery().await;
    assert_eq!(delivery.payload, sent);
    assert_eq!(delivery.token.email, SERVICE_ACCOUNT);
    assert_eq!(delivery.token.issuer, pipeline.emulator.issuer);
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
    assert_eq!(
        pipeline.emulator.wait_idle(WAIT).await,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_attempt_is_retried_with_retry_headers() {
    let mut pipeline = Pipeline::start(Behaviour::RetryFirstAttempt, right).await;
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
    assert_eq!(retry.context.previous_response, Some(503));
    assert!(retry.context.is_retry());
    assert_eq!(retry.token.email, SERVICE_ACCOUNT);
    assert_eq!(
        pipeline.emulator.wait_idle(WAIT).await,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_route_enqueues_for_the_task_route() {
    let mut pipeline = Pipeline::start(Behaviour::Succeed, right).await;
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
    let mut pipeline = Pipeline::start(Behaviour::Succeed, verifier).await;
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
            .unwrap()
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
            .unwrap()
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
            .unwrap()
    })
    .await;
    assert_eq!(error.check(), "iss", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_delivered_again_after_a_lost_answer_is_processed_once() {
    let mut pipeline = Pipeline::start(Behaviour::LoseFirstAnswer, right).await;
    let sent = document("twice.pdf");
    pipeline
        .client
        .create_document_processing_task(sent.document_id, &sent.filename)
        .await
        .unwrap();

    let first = pipeline.next_delivery().await;
    assert_eq!(
        pipeline.next_answer().await,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let second = pipeline.next_answer().await;
    assert_eq!(second, StatusCode::OK, "the duplicate is answered done");
    assert_eq!(
        pipeline.emulator.wait_idle(WAIT).await,
        reqwest::StatusCode::NO_CONTENT
    );

    assert_eq!(first.context.retry_count, 0);
    assert_eq!(pipeline.work.load(Ordering::SeqCst), 1, "the work ran once");
    assert!(
        pipeline.seen.try_recv().is_err(),
        "the processor saw one delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_again_while_it_is_processed_is_processed_once() {
    let mut pipeline = Pipeline::start(Behaviour::HoldFirstWork, right).await;
    let sent = document("concurrent.pdf");
    let task = pipeline
        .client
        .create_document_processing_task(sent.document_id, &sent.filename)
        .await
        .unwrap();
    pipeline.next_delivery().await;

    // RunTask dispatches the task again although an attempt is in flight: Cloud Tasks' own
    // way of delivering one task twice at the same time.
    let run = reqwest::Client::new()
        .post(format!(
            "http://{}/v2/{}:run",
            pipeline.emulator.addr,
            task.task_name()
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(run.status().is_success(), "{}", run.status());
    assert_eq!(
        pipeline.next_answer().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the second delivery finds the document being processed"
    );
    pipeline.release.notify_one();
    assert_eq!(
        pipeline.emulator.wait_idle(WAIT).await,
        reqwest::StatusCode::NO_CONTENT
    );
    assert_eq!(pipeline.work.load(Ordering::SeqCst), 1, "the work ran once");
}
