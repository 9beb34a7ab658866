//! The receiver as an axum extractor (feature `axum`): [`CloudTask<T>`] in a handler's
//! arguments verifies the request before the handler runs, and [`TaskOutcome`] is its answer.

use std::ops::{Deref, DerefMut};

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::{Delivery, OidcVerifier, Rejection, TaskContext, TaskOutcome, VerifyError};

/// A verified Cloud Tasks delivery with a JSON body of type `T`: the verified token, the
/// [`TaskContext`] and the payload, through [`Deref`] to [`Delivery`].
///
/// The verifier comes from the router's state through [`FromRef`]. Checks run in order, and the
/// request is answered before the handler runs when one fails:
///
/// | check | failure | status |
/// |---|---|---|
/// | OIDC token: present, RS256, known key, `exp`, `iss`, `aud` | [`VerifyError`](super::VerifyError) | 401, with `WWW-Authenticate: Bearer` (and `error="invalid_token"` when a token was sent) |
/// | `email` is the service account, `email_verified` | [`VerifyError::WrongEmail`](super::VerifyError::WrongEmail) | 403 |
/// | the issuer's keys can be had | [`VerifyError::KeyFetch`](super::VerifyError::KeyFetch) | 503, so Cloud Tasks retries |
/// | `X-CloudTasks-*` headers | [`HeaderError`](super::HeaderError) | 400 |
/// | body read within axum's body limit, JSON as `T` | [`Rejection::Payload`] | 400 |
///
/// The body is read only after the token passed. A rejection answers a short text naming what
/// failed (never the token, nor what was expected), logs the whole reason as a warning, and
/// puts the [`Rejection`] in the response's extensions for middleware that counts or reports
/// them.
///
/// ```no_run
/// use axum::Router;
/// use axum::extract::FromRef;
/// use axum::routing::post;
/// use cloud_tasks::receiver::{CloudTask, OidcVerifier, TaskOutcome};
/// use cloud_tasks::{PROCESS_DOCUMENT_PATH, ProcessDocumentPayload, Settings};
///
/// #[derive(Clone)]
/// struct AppState {
///     verifier: OidcVerifier,
/// }
///
/// impl FromRef<AppState> for OidcVerifier {
///     fn from_ref(state: &AppState) -> Self {
///         state.verifier.clone()
///     }
/// }
///
/// async fn process_document(task: CloudTask<ProcessDocumentPayload>) -> TaskOutcome {
///     println!("{} (attempt {})", task.payload.filename, task.context.attempt());
///     TaskOutcome::Done
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let verifier = OidcVerifier::from_settings(&Settings::from_env()?).build()?;
/// let app: Router = Router::new()
///     .route(PROCESS_DOCUMENT_PATH, post(process_document))
///     .with_state(AppState { verifier });
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CloudTask<T>(pub Delivery<T>);

impl<T> CloudTask<T> {
    /// The delivery: token, context and payload.
    pub fn into_inner(self) -> Delivery<T> {
        self.0
    }
}

impl<T> Deref for CloudTask<T> {
    type Target = Delivery<T>;

    fn deref(&self) -> &Delivery<T> {
        &self.0
    }
}

impl<T> DerefMut for CloudTask<T> {
    fn deref_mut(&mut self) -> &mut Delivery<T> {
        &mut self.0
    }
}

impl<S, T> FromRequest<S> for CloudTask<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
    OidcVerifier: FromRef<S>,
{
    type Rejection = CloudTaskRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        checked(request, state)
            .await
            .map(Self)
            .inspect_err(crate::telemetry::receiving::rejected)
            .map_err(CloudTaskRejection)
    }
}

/// [`receive`](super::receive)'s checks, with the body read through axum's limit.
async fn checked<S, T>(request: Request, state: &S) -> Result<Delivery<T>, Rejection>
where
    S: Send + Sync,
    T: DeserializeOwned,
    OidcVerifier: FromRef<S>,
{
    let verifier = OidcVerifier::from_ref(state);
    let (parts, body) = request.into_parts();
    // Nothing else is read from a request whose token fails.
    let token = verifier
        .verify_request(&parts.headers)
        .await
        .map_err(Rejection::from)?;
    let context = TaskContext::from_headers(&parts.headers).map_err(Rejection::from)?;
    let processing = crate::telemetry::receiving::Processing::start(&parts.headers, &context);
    let body = Bytes::from_request(Request::from_parts(parts, body), state)
        .await
        .map_err(|error| Rejection::Payload {
            reason: format!("cannot read the body: {}", error.body_text()),
        })?;
    let payload = serde_json::from_slice(&body).map_err(Rejection::payload)?;
    Ok(Delivery {
        processing,
        token,
        context,
        payload,
    })
}

/// Why [`CloudTask`] refused a request; answers with [`Rejection::status_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct CloudTaskRejection(pub Rejection);

impl From<Rejection> for CloudTaskRejection {
    fn from(rejection: Rejection) -> Self {
        Self(rejection)
    }
}

impl IntoResponse for CloudTaskRejection {
    fn into_response(self) -> Response {
        let rejection = self.0;
        let status = rejection.status_code();
        tracing::warn!(%status, %rejection, "refused a Cloud Tasks request");
        let mut response = (status, rejection.short_reason()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750, section 3.1: a request without credentials gets no error code.
            let challenge = if rejection == Rejection::Token(VerifyError::MissingToken) {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response.extensions_mut().insert(rejection);
        response
    }
}

impl IntoResponse for TaskOutcome {
    fn into_response(self) -> Response {
        self.log();
        let mut response = (self.status_code(), self.body()).into_response();
        if let Some(seconds) = self.retry_after_seconds() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(self);
        response
    }
}
