//! Per-call request metadata: Google credentials, the routing header and the client identity.

use std::sync::Arc;

use google_cloud_auth::credentials::{self, CacheableResource, Credentials};
use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::Error;

/// OAuth scope Cloud Tasks accepts.
pub(crate) const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Identifies this library to Google, in the format Google's own clients use.
pub(crate) const API_CLIENT: &str = concat!(
    "gl-rust/",
    env!("CLOUD_TASKS_RUSTC_VERSION"),
    " grpc/0.14 gccl/",
    env!("CARGO_PKG_VERSION")
);

/// Characters Google's clients leave unescaped in `x-goog-request-params` values.
const ROUTING_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Where a call's `authorization` header comes from.
#[derive(Clone)]
pub(crate) enum Auth {
    /// Application Default Credentials (or credentials the caller supplied).
    Google(Credentials),
    /// Emulators and tests: no credentials at all.
    None,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials themselves: they may hold a key or a cached token.
        f.write_str(match self {
            Self::Google(_) => "Google credentials",
            Self::None => "no credentials (emulator)",
        })
    }
}

impl Auth {
    /// Application Default Credentials with the cloud-platform scope.
    ///
    /// Must run inside a Tokio runtime: the credentials spawn their background refresh.
    pub(crate) fn application_default() -> Result<Self, Error> {
        credentials::Builder::default()
            .with_scopes([CLOUD_PLATFORM_SCOPE])
            .build()
            .map(Self::Google)
            .map_err(|error| Error::Auth {
                source: Arc::new(error),
            })
    }

    /// Adds the credentials' headers (`authorization`, maybe `x-goog-user-project`) to `headers`.
    ///
    /// The credentials cache the token and refresh it in the background, so this does not fetch
    /// a token on each call.
    pub(crate) async fn add_headers(&self, headers: &mut HeaderMap) -> Result<(), Error> {
        let Self::Google(credentials) = self else {
            return Ok(());
        };
        let fresh = credentials
            .headers(http::Extensions::new())
            .await
            .map_err(|error| Error::Auth {
                source: Arc::new(error),
            })?;
        if let CacheableResource::New { data, .. } = fresh {
            for (name, mut value) in data {
                if let Some(name) = name {
                    if name == http::header::AUTHORIZATION {
                        value.set_sensitive(true);
                    }
                    headers.insert(name, value);
                }
            }
        }
        Ok(())
    }
}

/// The headers every call to a queue carries: routing (`parent=`) and client identity.
pub(crate) fn queue_call_headers(queue_path: &str) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(4);
    let routing = format!("parent={}", utf8_percent_encode(queue_path, ROUTING_VALUE));
    headers.insert(
        HeaderName::from_static("x-goog-request-params"),
        HeaderValue::try_from(routing).expect("percent-encoded text is a valid header value"),
    );
    headers.insert(
        HeaderName::from_static("x-goog-api-client"),
        HeaderValue::from_static(API_CLIENT),
    );
    headers
}

/// An `x-goog-request-params` value routing a call by `key` (e.g. `name=` for an operation).
pub(crate) fn routing_value(key: &str, value: &str) -> tonic::metadata::AsciiMetadataValue {
    format!("{key}={}", utf8_percent_encode(value, ROUTING_VALUE))
        .try_into()
        .expect("percent-encoded text is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_header_is_url_encoded() {
        let headers = queue_call_headers("projects/p/locations/us-central1/queues/q-1");
        assert_eq!(
            headers["x-goog-request-params"],
            "parent=projects%2Fp%2Flocations%2Fus-central1%2Fqueues%2Fq-1"
        );
        assert!(
            headers["x-goog-api-client"]
                .to_str()
                .unwrap()
                .starts_with("gl-rust/")
        );
    }
}
