//! The issuer's signing keys: fetched from its JWKS, cached by `kid`, and kept through outages.
//!
//! - One fetch in flight at a time: a delivery that needs keys waits for the fetch already
//!   running rather than starting its own, and reads its result.
//! - Keys are fresh for the response's `Cache-Control: max-age`. Past it, a key is still used
//!   for up to `max_stale` while a refresh runs in the background, so a slow or unreachable JWKS
//!   delays no delivery signed by a known key.
//! - A failed fetch is remembered for `failure_ttl`: meanwhile a token naming an unknown `kid` is
//!   refused at once as unavailable (503, Cloud Tasks retries), not after another fetch timeout.
//! - The fetch has a connect timeout, a total timeout and a response size limit, and follows no
//!   redirects.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use serde::Deserialize;

use super::oidc::{VerifyError, check_key_url, untrusted};

/// How long keys and failures are kept; see [`super::OidcVerifierBuilder`] for each.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachePolicy {
    pub(super) min_refresh_interval: Duration,
    pub(super) max_stale: Duration,
    pub(super) failure_ttl: Duration,
    pub(super) default_max_age: Duration,
    pub(super) max_response_bytes: usize,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub(super) enum KeySource {
    Jwks(String),
    Discovery { issuer: String },
}

/// The cache shared by every clone of a verifier.
#[derive(Clone)]
pub(super) struct KeyCache {
    inner: Arc<Inner>,
}

struct Inner {
    source: KeySource,
    http: reqwest::Client,
    policy: CachePolicy,
    state: Mutex<State>,
    /// Held by the one fetch in flight; holds the JWKS URL once discovery has found it.
    fetch: Arc<tokio::sync::Mutex<Option<String>>>,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    failure: Option<Failure>,
}

struct Failure {
    at: Instant,
    error: VerifyError,
}

struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Instant,
    max_age: Duration,
}

enum Lookup {
    /// Within its `max-age`.
    Fresh(DecodingKey),
    /// Past its `max-age` but within `max_stale`: use it, and refresh in the background.
    Stale(DecodingKey),
    /// Answer without fetching.
    Refuse(VerifyError),
    Fetch,
}

impl KeyCache {
    pub(super) fn new(source: KeySource, http: reqwest::Client, policy: CachePolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                http,
                policy,
                state: Mutex::new(State::default()),
                fetch: Arc::new(tokio::sync::Mutex::new(None)),
            }),
        }
    }

    /// The key named `kid`, from the cache when it can be trusted, else from one fetch shared
    /// with every other verification waiting for keys.
    pub(super) async fn key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        let asked = Instant::now();
        match self.inner.lookup(kid, None) {
            Lookup::Fresh(key) => return Ok(key),
            Lookup::Stale(key) => {
                self.refresh_in_background();
                return Ok(key);
            }
            Lookup::Refuse(error) => return Err(error),
            Lookup::Fetch => {}
        }
        let mut jwks_url = self.inner.fetch.lock().await;
        // The fetch this one waited for may have answered the question, either way.
        match self.inner.lookup(kid, Some(asked)) {
            Lookup::Fresh(key) | Lookup::Stale(key) => return Ok(key),
            Lookup::Refuse(error) => return Err(error),
            Lookup::Fetch => {}
        }
        let set = self.inner.fetch_and_store(&mut jwks_url).await?;
        set.keys
            .get(kid)
            .cloned()
            .ok_or_else(|| VerifyError::UnknownKey {
                kid: untrusted(kid),
            })
    }

    /// Starts a refresh on the current runtime unless one is running or failed recently.
    fn refresh_in_background(&self) {
        if self.inner.failed_recently(None) {
            return;
        }
        let Ok(mut jwks_url) = self.inner.fetch.clone().try_lock_owned() else {
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            // The outcome is recorded (and a failure logged) by fetch_and_store.
            inner.fetch_and_store(&mut jwks_url).await.ok();
        });
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the cache can say about `kid` without fetching. `asked` is when the caller started
    /// waiting for the fetch lock: a fetch that ended after it answers for this caller too.
    fn lookup(&self, kid: &str, asked: Option<Instant>) -> Lookup {
        let state = self.state();
        let policy = &self.policy;
        if let Some(set) = &state.keys
            && let Some(key) = set.keys.get(kid)
        {
            let age = set.fetched_at.elapsed();
            if age < set.max_age {
                return Lookup::Fresh(key.clone());
            }
            if age < set.max_age.saturating_add(policy.max_stale) {
                return Lookup::Stale(key.clone());
            }
        }
        if let Some(failure) = &state.failure
            && (failure.at.elapsed() < policy.failure_ttl || asked.is_some_and(|t| failure.at >= t))
        {
            return Lookup::Refuse(failure.error.clone());
        }
        if let Some(set) = &state.keys
            && !set.keys.contains_key(kid)
            && (set.fetched_at.elapsed() < policy.min_refresh_interval
                || asked.is_some_and(|t| set.fetched_at >= t))
        {
            return Lookup::Refuse(VerifyError::UnknownKey {
                kid: untrusted(kid),
            });
        }
        Lookup::Fetch
    }

    fn failed_recently(&self, asked: Option<Instant>) -> bool {
        self.state().failure.as_ref().is_some_and(|failure| {
            failure.at.elapsed() < self.policy.failure_ttl || asked.is_some_and(|t| failure.at >= t)
        })
    }

    /// Fetches the keys (finding the JWKS URL first if needed) and records the outcome: new
    /// keys replace the old ones; a failure keeps the old ones and is remembered.
    async fn fetch_and_store(
        &self,
        jwks_url: &mut Option<String>,
    ) -> Result<Arc<KeySet>, VerifyError> {
        let result = self.fetch(jwks_url).await;
        let mut state = self.state();
        match result {
            Ok(set) => {
                let set = Arc::new(set);
                state.keys = Some(set.clone());
                state.failure = None;
                Ok(set)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    cached_keys = state.keys.as_ref().map_or(0, |set| set.keys.len()),
                    "cannot refresh the OIDC issuer's keys; cached keys stay in use within their \
                     staleness limit"
                );
                state.failure = Some(Failure {
                    at: Instant::now(),
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    async fn fetch(&self, jwks_url: &mut Option<String>) -> Result<KeySet, VerifyError> {
        let url = match jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.resolve_jwks_url().await?;
                *jwks_url = Some(url.clone());
                url
            }
        };
        let (body, max_age) = self.get(&url).await?;
        let document: JwksDocument =
            serde_json::from_slice(&body).map_err(|error| VerifyError::KeyFetch {
                url: url.clone(),
                reason: format!("not a JWKS document: {error}"),
            })?;
        // Keys this verifier cannot use (other types or algorithms, no kid) are skipped, not
        // fatal: issuers may publish several kinds.
        let keys = document
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter(|jwk| {
                matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
                    && jwk
                        .common
                        .key_algorithm
                        .is_none_or(|alg| alg == KeyAlgorithm::RS256)
            })
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some((kid, key))
            })
            .collect();
        Ok(KeySet {
            keys,
            fetched_at: Instant::now(),
            // `no-store` must not turn every verification into a fetch.
            max_age: max_age
                .unwrap_or(self.policy.default_max_age)
                .max(self.policy.min_refresh_interval),
        })
    }

    async fn resolve_jwks_url(&self) -> Result<String, VerifyError> {
        let issuer = match &self.source {
            KeySource::Jwks(url) => return Ok(url.clone()),
            KeySource::Discovery { issuer } => issuer,
        };
        let url = format!("{issuer}/.well-known/openid-configuration");
        let failed = |reason: String| VerifyError::KeyFetch {
            url: url.clone(),
            reason,
        };
        let (body, _) = self.get(&url).await?;
        let document: Discovery = serde_json::from_slice(&body)
            .map_err(|error| failed(format!("not an OpenID discovery document: {error}")))?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked.
        if document.issuer.trim_end_matches('/') != issuer {
            return Err(failed(format!(
                "the discovery document names issuer {:?}, not {issuer:?}",
                document.issuer
            )));
        }
        // The same rule as a configured JWKS URL: keys never come over plain http from afar.
        check_key_url(&document.jwks_uri)
            .map_err(|reason| failed(format!("its jwks_uri is refused: {reason}")))?;
        Ok(document.jwks_uri)
    }

    /// GETs `url`; returns the body and the response's `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), VerifyError> {
        let failed = |reason: String| VerifyError::KeyFetch {
            url: url.to_owned(),
            reason,
        };
        let limit = self.policy.max_response_bytes;
        let too_large = || format!("the response is larger than the {limit}-byte limit");
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|error| failed(describe(error)))?;
        if !response.status().is_success() {
            return Err(failed(format!("answered {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(failed(too_large()));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| failed(describe(error)))?
        {
            if body.len() + chunk.len() > limit {
                return Err(failed(too_large()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// reqwest's message with its causes, the kind of failure first (a timeout alone reads "error
/// sending request"); without the URL, which the error names already.
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out: "
    } else if error.is_connect() {
        "cannot connect: "
    } else {
        ""
    };
    let error = error.without_url();
    let mut message = format!("{kind}{error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state();
        let mut kids: Vec<&String> = state
            .keys
            .as_ref()
            .map(|set| set.keys.keys().collect())
            .unwrap_or_default();
        kids.sort();
        f.debug_struct("KeyCache")
            .field("source", &self.inner.source)
            .field("policy", &self.inner.policy)
            .field("kids", &kids)
            .field("failing", &state.failure.is_some())
            .finish_non_exhaustive()
    }
}

/// `max-age` of a `Cache-Control` value, unless `no-store`/`no-cache` forbid reuse.
pub(super) fn max_age(cache_control: &str) -> Option<Duration> {
    let directives: Vec<&str> = cache_control.split(',').map(str::trim).collect();
    if directives
        .iter()
        .any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache"))
    {
        return Some(Duration::ZERO);
    }
    directives.iter().find_map(|directive| {
        let (name, value) = directive.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().parse().ok().map(Duration::from_secs))?
    })
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=22478, must-revalidate, no-transform"),
            Some(Duration::from_secs(22478))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
