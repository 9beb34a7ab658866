//! The receiving side behind Cloud Run's invoker IAM, end to end: the crates.io emulator
//! delivers to a stand-in for Cloud Run's front end, which checks each token and forwards it
//! with the signature removed, as Cloud Run does, to the example backend
//! (`examples/backend/app.rs`).
//!
//! The stand-in is the test's model of Cloud Run (its "Authenticating service-to-service" and
//! troubleshooting pages): with invoker IAM on, the token in `X-Serverless-Authorization`, or
//! else in `Authorization`, must be signed by the issuer, name the service URL as audience, and
//! belong to an account granted `roles/run.invoker` (here the one account the Terraform grants);
//! a request failing that is answered 401 or 403 and never reaches the container; the checked
//! token reaches it as `<header>.<payload>.SIGNATURE_REMOVED_BY_GOOGLE`.

#[path = "../examples/backend/app.rs"]
mod app;
#[path = "common/emulator.rs"]
mod emulator;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloud_tasks::receiver::{
    CloudTask, OidcVerifier, Rejection, SERVERLESS_AUTHORIZATION, SIGNATURE_REMOVED_BY_GOOGLE,
    SignatureCheck, VerifyError,
};
use cloud_tasks::{CloudTasksClient, PROCESS_DOCUMENT_PATH, ProcessDocumentPayload, Uuid};
use emulator::{Emulator, LocalServer, SERVICE_ACCOUNT};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

/// Cloud Run's front end with invoker IAM on, in front of one backend.
#[derive(Clone)]
struct FrontEnd {
    /// Checks what Cloud Run checks: the issuer's signature, the service URL as audience, and
    /// the invoker (the one account granted `roles/run.invoker`).
    invoker_check: OidcVerifier,
    backend: String,
    http: reqwest::Client,
}

impl FrontEnd {
    fn router(self) -> axum::Router {
        axum::Router::new().fallback(forward).with_state(self)
    }
}

/// Checks the token Cloud Run would check, removes its signature, and forwards the request.
async fn forward(State(front): State<FrontEnd>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    let checked = if headers.contains_key(SERVERLESS_AUTHORIZATION) {
        SERVERLESS_AUTHORIZATION
    } else {
        "authorization"
    };
    let Some(token) = headers
        .get(checked)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned)
    else {
        return (StatusCode::UNAUTHORIZED, "no token").into_response();
    };
    match front.invoker_check.verify(&token).await {
        Ok(_) => {}
        Err(VerifyError::WrongEmail { .. } | VerifyError::EmailNotVerified) => {
            return (StatusCode::FORBIDDEN, "not an invoker").into_response();
        }
        Err(_) => return (StatusCode::UNAUTHORIZED, "invalid token").into_response(),
    }
    let (signed_part, _) = token
        .rsplit_once('.')
        .expect("a verified JWT has three parts");
    headers.insert(
        checked,
        HeaderValue::try_from(format!(
            "Bearer {signed_part}.{SIGNATURE_REMOVED_BY_GOOGLE}"
        ))
        .unwrap(),
    );
    headers.remove("host");
    headers.remove("content-length");
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let answer = front
        .http
        .request(parts.method, format!("{}{path}", front.backend))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match answer {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            response
                .body(Body::from(answer.bytes().await.unwrap_or_default()))
                .unwrap()
        }
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Counts the work per document, records who checked each token, and asks for a retry on the
/// first attempt of the documents in `retry_first`.
struct Recorder {
    work: Arc<Mutex<HashMap<Uuid, usize>>>,
    signatures: Arc<Mutex<Vec<SignatureCheck>>>,
    retry_first: Vec<Uuid>,
}

impl app::Processor for Recorder {
    async fn process(
        &self,
        task: &CloudTask<ProcessDocumentPayload>,
    ) -> cloud_tasks::receiver::TaskOutcome {
        self.signatures.lock().unwrap().push(task.token.signature);
        let document = task.payload.document_id;
        if !task.context.is_retry() && self.retry_first.contains(&document) {
            return cloud_tasks::receiver::TaskOutcome::retry_later();
        }
        *self.work.lock().unwrap().entry(document).or_default() += 1;
        cloud_tasks::receiver::TaskOutcome::Done
    }
}

struct Deployment {
    client: CloudTasksClient,
    emulator: Emulator,
    /// The service URL: the front end's.
    service_url: String,
    backend: String,
    documents: app::Documents,
    work: Arc<Mutex<HashMap<Uuid, usize>>>,
    signatures: Arc<Mutex<Vec<SignatureCheck>>>,
    rejections: mpsc::UnboundedReceiver<Rejection>,
}

impl Deployment {
    /// Emulator -> front end -> example backend, whose verifier trusts Cloud Run's check when
    /// `verified_by_cloud_run`.
    async fn start(verified_by_cloud_run: bool, retry_first: Vec<Uuid>) -> Self {
        let front_server = LocalServer::bind().await;
        let backend_server = LocalServer::bind().await;
        let service_url = front_server.url();
        let backend = backend_server.url();
        let (emulator, client) = Emulator::start("document-processing", &service_url).await;
        let issuer = &emulator.issuer;

        let front = FrontEnd {
            invoker_check: OidcVerifier::builder(&service_url, SERVICE_ACCOUNT)
                .with_issuer(issuer)
                .build()
                .unwrap(),
            backend: backend.clone(),
            http: reqwest::Client::new(),
        };
        front_server.serve(front.router());

        // The backend as deployed: the service URL as audience, the invoker account, and (in
        // production, through CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN) Cloud Run's check trusted.
        let verifier = OidcVerifier::builder(&service_url, SERVICE_ACCOUNT)
            .with_issuer(issuer)
            .with_verified_by_cloud_run(verified_by_cloud_run)
            .build()
            .unwrap();
        let work = Arc::default();
        let signatures = Arc::default();
        let documents = app::Documents::default();
        let (rejected, rejections) = mpsc::unbounded_channel();
        let router = app::router(app::App {
            client: client.clone(),
            verifier,
            processor: Arc::new(Recorder {
                work: Arc::clone(&work),
                signatures: Arc::clone(&signatures),
                retry_first,
            }),
            documents: documents.clone(),
        })
        .layer(axum::middleware::map_response(move |response: Response| {
            if let Some(rejection) = response.extensions().get::<Rejection>() {
                rejected.send(rejection.clone()).ok();
            }
            std::future::ready(response)
        }));
        backend_server.serve(router);
        Self {
            client,
            emulator,
            service_url,
            backend,
            documents,
            work,
            signatures,
            rejections,
        }
    }
}

fn documents(count: usize) -> Vec<ProcessDocumentPayload> {
    (0..count)
        .map(|index| ProcessDocumentPayload {
            document_id: Uuid::new_v4(),
            filename: format!("scan-{index:02}.pdf"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_front_end_every_valid_delivery_is_processed_once() {
    let sent = documents(21);
    let retry_first: Vec<Uuid> = sent.iter().step_by(5).map(|d| d.document_id).collect();
    let mut deployment = Deployment::start(true, retry_first.clone()).await;
    for document in &sent {
        deployment
            .client
            .create_document_processing_task(document.document_id, &document.filename)
            .await
            .unwrap();
    }
    assert_eq!(
        deployment.emulator.wait_idle(WAIT).await,
        reqwest::StatusCode::NO_CONTENT,
        "the emulator holds no task: every one was answered 2xx"
    );

    let work = deployment.work.lock().unwrap().clone();
    for document in &sent {
        assert_eq!(
            work.get(&document.document_id),
            Some(&1),
            "{} processed once",
            document.filename
        );
        assert!(deployment.documents.is_finished(document.document_id));
    }
    assert_eq!(work.len(), sent.len());
    let signatures = deployment.signatures.lock().unwrap().clone();
    assert_eq!(signatures.len(), sent.len() + retry_first.len());
    assert!(
        signatures.iter().all(|s| *s == SignatureCheck::CloudRun),
        "every token arrived with its signature removed: {signatures:?}"
    );
    assert!(
        deployment.rejections.try_recv().is_err(),
        "no delivery was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_opt_in_a_delivery_through_the_front_end_is_refused_with_401() {
    let mut deployment = Deployment::start(false, Vec::new()).await;
    let document = &documents(1)[0];
    deployment
        .client
        .create_document_processing_task(document.document_id, &document.filename)
        .await
        .unwrap();
    let rejection = tokio::time::timeout(WAIT, deployment.rejections.recv())
        .await
        .expect("a delivery arrived in time")
        .unwrap();
    assert_eq!(rejection, Rejection::Token(VerifyError::SignatureRemoved));
    assert_eq!(rejection.status_code(), StatusCode::UNAUTHORIZED);
    assert!(deployment.work.lock().unwrap().is_empty());
}

/// A token nobody signed, with the marker where the signature goes.
fn forged(claims: &serde_json::Value) -> String {
    let header = json!({ "alg": "RS256", "kid": "forged", "typ": "JWT" });
    format!(
        "{}.{}.{SIGNATURE_REMOVED_BY_GOOGLE}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn post_task(url: &str, token: &str) -> reqwest::StatusCode {
    let body = json!({ "document_id": Uuid::new_v4(), "filename": "forged.pdf" });
    reqwest::Client::new()
        .post(format!("{url}{PROCESS_DOCUMENT_PATH}"))
        .bearer_auth(token)
        .header("x-cloudtasks-queuename", "document-processing")
        .header("x-cloudtasks-taskname", "forged")
        .header("x-cloudtasks-taskretrycount", "0")
        .header("x-cloudtasks-taskexecutioncount", "0")
        .header("x-cloudtasks-tasketa", "1764412345.5")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_tokens_with_forged_claims_are_refused() {
    let deployment = Deployment::start(true, Vec::new()).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "aud": deployment.service_url,
        "email": SERVICE_ACCOUNT,
        "email_verified": true,
        "exp": now + 3600,
        "iat": now,
        "iss": deployment.emulator.issuer,
        "sub": "1",
    });
    let with = |name: &str, value: serde_json::Value| {
        let mut claims = claims.clone();
        claims[name] = value;
        claims
    };
    // Straight to the backend, past the front end.
    for (forgery, expected) in [
        (
            with("email", json!("intruder@other.iam.gserviceaccount.com")),
            StatusCode::FORBIDDEN,
        ),
        (with("email_verified", json!(false)), StatusCode::FORBIDDEN),
        (
            with("aud", json!("https://other-service.a.run.app")),
            StatusCode::UNAUTHORIZED,
        ),
        (
            with("iss", json!("https://accounts.example")),
            StatusCode::UNAUTHORIZED,
        ),
        (with("exp", json!(now - 3600)), StatusCode::UNAUTHORIZED),
    ] {
        let status = post_task(&deployment.backend, &forged(&forgery)).await;
        assert_eq!(status.as_u16(), expected.as_u16(), "{forgery}");
    }
    // Through the front end, no forgery gets in: it checks the signature itself.
    let status = post_task(&deployment.service_url, &forged(&claims)).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    assert!(
        deployment.work.lock().unwrap().is_empty(),
        "no forged delivery was processed"
    );
}
