//! The receiving side: what a backend needs to accept a Cloud Tasks delivery.
//!
//! - [`OidcVerifier`]: checks the OIDC token Cloud Tasks sends (signature, issuer, audience,
//!   expiry, service account).
//! - [`TaskContext`]: the `X-CloudTasks-*` headers (task name, retry count, ...), typed.
//! - [`receive`]: both, plus the JSON body parsed into the shared payload type
//!   ([`ProcessDocumentPayload`](crate::ProcessDocumentPayload) for document tasks), in the order
//!   a handler should apply them, with the HTTP status to answer when the request is rejected.
//!
//! It is framework-agnostic (only `http` types), so it fits axum, actix-web or hyper alike;
//! `examples/backend` shows an axum handler. Enable it with the `receiver` feature.
//!
//! ```no_run
//! # async fn handle(headers: http::HeaderMap, body: Vec<u8>) -> http::StatusCode {
//! use cloud_tasks::ProcessDocumentPayload;
//! use cloud_tasks::receiver::{self, OidcVerifier};
//!
//! let verifier = OidcVerifier::builder(
//!     "https://backend-abc123-uc.a.run.app",
//!     "tasks-invoker@my-project.iam.gserviceaccount.com",
//! )
//! .build();
//! match receiver::receive::<ProcessDocumentPayload>(&verifier, &headers, &body).await {
//!     Ok(delivery) => {
//!         println!(
//!             "{} attempt {} for {}",
//!             delivery.context.task_name,
//!             delivery.context.retry_count + 1,
//!             delivery.payload.filename
//!         );
//!         http::StatusCode::OK
//!     }
//!     Err(rejection) => rejection.status_code(),
//! }
//! # }
//! ```

mod headers;
mod oidc;

use http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

pub use headers::{
    ETA_HEADER, EXECUTION_COUNT_HEADER, HeaderError, PREVIOUS_RESPONSE_HEADER, QUEUE_NAME_HEADER,
    RETRY_COUNT_HEADER, RETRY_REASON_HEADER, TASK_NAME_HEADER, TaskContext,
};
pub use oidc::{
    GOOGLE_ISSUERS, GOOGLE_JWKS_URL, OIDC_ISSUER_VAR, OidcVerifier, OidcVerifierBuilder,
    VerifiedToken, VerifyError,
};

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
    let token = verifier.verify_request(headers).await?;
    let context = TaskContext::from_headers(headers)?;
    let payload = serde_json::from_slice(body).map_err(|error| Rejection::Payload {
        reason: error.to_string(),
    })?;
    Ok(Delivery {
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
    /// The status to answer: 401 for a bad token, 503 when the issuer's keys could not be
    /// fetched (Cloud Tasks retries), 400 for bad headers or body.
    ///
    /// Cloud Tasks retries every non-2xx answer until the queue's retry limits run out, so a
    /// body that can never be processed keeps coming back: log it, and answer 2xx yourself if
    /// you would rather drop it.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Token(error) if error.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Token(_) => StatusCode::UNAUTHORIZED,
            Self::Headers(_) | Self::Payload { .. } => StatusCode::BAD_REQUEST,
        }
    }
}
