//! The receiving side: what a backend needs to accept a Cloud Tasks delivery.
//!
//! - [`OidcVerifier`]: checks the OIDC token Cloud Tasks sends (signature, issuer, audience,
//!   expiry, service account), with a key cache that rides out an unreachable issuer; behind
//!   Cloud Run's invoker IAM, opted in, it accepts the tokens whose signature Cloud Run checked
//!   and removed. Build it from the same [`Settings`](crate::Settings) as the client with
//!   [`OidcVerifier::from_settings`].
//! - [`TaskContext`]: the `X-CloudTasks-*` headers (task name, retry count, ...), typed.
//! - [`receive`]: both, plus the JSON body parsed into the shared payload type
//!   ([`ProcessDocumentPayload`](crate::ProcessDocumentPayload) for document tasks), in the order
//!   a handler should apply them, with the HTTP status to answer when the request is rejected.
//! - [`TaskOutcome`]: the handler's answer (done, retry later, give up) as the status Cloud Tasks
//!   acts on.
//! - With the `axum` feature, `CloudTask<T>`: all of the above as an axum extractor.
//!
//! The core is framework-agnostic (only `http` types), so it fits axum, actix-web or hyper alike.
//! Enable it with the `receiver` feature. `docs/RECEIVING.md` describes how Cloud Tasks retries
//! and how to process each document once although delivery is at least once.
//!
//! ```no_run
//! # async fn handle(headers: http::HeaderMap, body: Vec<u8>) -> Result<http::StatusCode, Box<dyn std::error::Error>> {
//! use cloud_tasks::receiver::{self, OidcVerifier, TaskOutcome};
//! use cloud_tasks::{ProcessDocumentPayload, Settings};
//!
//! // At start-up: a bad setting is an error naming its variable.
//! let verifier = OidcVerifier::from_settings(&Settings::from_env()?).build()?;
//!
//! // Per request:
//! Ok(match receiver::receive::<ProcessDocumentPayload>(&verifier, &headers, &body).await {
//!     Ok(delivery) => {
//!         println!(
//!             "{} attempt {} for {}",
//!             delivery.context.task_name,
//!             delivery.context.attempt(),
//!             delivery.payload.filename
//!         );
//!         TaskOutcome::Done.status_code()
//!     }
//!     Err(rejection) => rejection.status_code(),
//! })
//! # }
//! ```

#[cfg(feature = "axum")]
mod extract;
mod headers;
mod jwks;
mod oidc;
mod outcome;

use std::future::Future;

use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

pub use crate::config::{CLOUD_RUN_SERVICE_VAR, OIDC_ISSUER_VAR, OIDC_VERIFIED_BY_CLOUD_RUN_VAR};
#[cfg(feature = "axum")]
pub use extract::{CloudTask, CloudTaskRejection};
pub use headers::{
    ETA_HEADER, EXECUTION_COUNT_HEADER, HeaderError, PREVIOUS_RESPONSE_HEADER, QUEUE_NAME_HEADER,
    RETRY_COUNT_HEADER, RETRY_REASON_HEADER, TASK_NAME_HEADER, TaskContext,
};
pub use oidc::{
    DEFAULT_FAILURE_TTL, DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_STALE, GOOGLE_ISSUERS, GOOGLE_JWKS_URL,
    MAX_JWKS_BYTES, MAX_TOKEN_BYTES, OidcVerifier, OidcVerifierBuilder, SERVERLESS_AUTHORIZATION,
    SIGNATURE_REMOVED_BY_GOOGLE, SignatureCheck, VerifiedToken, VerifyError,
};
pub use outcome::TaskOutcome;

use crate::telemetry::receiving::Processing;

/// A delivery that passed every check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Delivery<T> {
    /// Who sent it, according to the verified token.
    pub token: VerifiedToken,
    /// The attempt, from the `X-CloudTasks-*` headers.
    pub context: TaskContext,
    /// The task body.
    pub payload: T,
    pub(crate) processing: Processing,
}

impl<T> Delivery<T> {
    /// The delivery's processing span (`process {queue}`, CONSUMER), linked to the span that
    /// enqueued the task when the `opentelemetry` feature is on and the task carries its
    /// context.
    pub fn span(&self) -> &tracing::Span {
        self.processing.span()
    }

    /// Runs `work`, this delivery's processing, inside [`Delivery::span`], and records its
    /// outcome on the span and (feature `opentelemetry`) in the `messaging.process.duration`
    /// histogram.
    ///
    /// ```no_run
    /// # async fn handle(delivery: cloud_tasks::receiver::Delivery<cloud_tasks::ProcessDocumentPayload>) {
    /// use cloud_tasks::receiver::TaskOutcome;
    ///
    /// let outcome = delivery
    ///     .run(async {
    ///         // download, extract, store ...
    ///         TaskOutcome::Done
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn run(&self, work: impl Future<Output = TaskOutcome>) -> TaskOutcome {
        self.processing.run(&self.context.queue_name, work).await
    }

    /// The span context the task was enqueued in (feature `opentelemetry`): from the
    /// `x-enqueue-traceparent` header the enqueue side writes, else `traceparent`; `None` when
    /// the task carries neither. Its trace ID is the upload's trace.
    #[cfg(feature = "opentelemetry")]
    pub fn enqueued_in(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.processing.producer()
    }
}

/// Checks a Cloud Tasks request: the OIDC token first (nothing else is read from an
/// unauthenticated request), then the headers, then the JSON body.
///
/// # Errors
/// A [`Rejection`]; answer its [`Rejection::status_code`].
pub async fn receive<T: DeserializeOwned>(
    verifier: &OidcVerifier,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery<T>, Rejection> {
    checked(verifier, headers, body)
        .await
        .inspect_err(crate::telemetry::receiving::rejected)
}

async fn checked<T: DeserializeOwned>(
    verifier: &OidcVerifier,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Delivery<T>, Rejection> {
    let token = verifier.verify_request(headers).await?;
    let context = TaskContext::from_headers(headers)?;
    let payload = serde_json::from_slice(body).map_err(Rejection::payload)?;
    Ok(Delivery {
        processing: Processing::start(headers, &context),
        token,
        context,
        payload,
    })
}

/// Why [`receive`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The OIDC token is missing or failed a check.
    #[error(transparent)]
    Token(#[from] VerifyError),
    /// A Cloud Tasks header is missing or malformed.
    #[error(transparent)]
    Headers(#[from] HeaderError),
    /// The body is not the expected JSON.
    #[error("task body is not the expected JSON: {reason}")]
    Payload {
        /// The parser's message.
        reason: String,
    },
}

impl Rejection {
    /// The body did not parse. serde's message quotes the body, so it is escaped and truncated
    /// like every other text the sender chose.
    pub(crate) fn payload(error: serde_json::Error) -> Self {
        Self::Payload {
            reason: oidc::untrusted(&error.to_string()),
        }
    }

    /// The status to answer: 401 for a missing or invalid token, 403 for a valid token of
    /// another identity (`email`, `email_verified`), 503 when the issuer's keys cannot be had
    /// (Cloud Tasks retries), 400 for bad headers or body.
    ///
    /// Cloud Tasks retries every non-2xx answer until the queue's retry limits run out, so a
    /// body that can never be processed keeps coming back: it is logged each time.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Token(error) if error.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Token(VerifyError::WrongEmail { .. } | VerifyError::EmailNotVerified) => {
                StatusCode::FORBIDDEN
            }
            Self::Token(_) => StatusCode::UNAUTHORIZED,
            Self::Headers(_) | Self::Payload { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// A short answer for the caller: what failed, never the token, what was expected, or the
    /// body. The whole reason is the `Display` text, for the log.
    pub fn short_reason(&self) -> String {
        match self {
            Self::Token(error) if error.is_unavailable() => {
                "cannot check the OIDC token now: the issuer's keys are unavailable; retry later"
                    .to_owned()
            }
            Self::Token(error) => format!("OIDC token rejected: {} check failed", error.check()),
            Self::Headers(error) => format!("bad Cloud Tasks header {}", error.header()),
            Self::Payload { .. } => "task body is not the expected JSON".to_owned(),
        }
    }
}
