//! Verifies the OIDC ID token Cloud Tasks sends in `Authorization: Bearer ...`.
//!
//! Why not `google_cloud_auth::credentials::idtoken::verifier`: it accepts only Google's issuers
//! (and IAP's ES256 one), so it cannot verify the emulator's tokens, and it takes the algorithm
//! from the token header. This verifier pins RS256, accepts exactly the configured issuers, and
//! reports which check failed. The cryptography is `jsonwebtoken`'s (on aws-lc-rs).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The two `iss` values Google's ID tokens carry.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Google's signing keys for ID tokens.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";
/// Environment variable naming a non-Google token issuer, such as the local emulator
/// (`http://127.0.0.1:8123`); `cloud-tasks emulator` prints it.
pub const OIDC_ISSUER_VAR: &str = "CLOUD_TASKS_OIDC_ISSUER";

/// Keys are kept this long when the JWKS response has no `Cache-Control: max-age`.
const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(60 * 60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Verifies Cloud Tasks' OIDC tokens for one audience and one service account.
///
/// Checks, in order: the token is a JWT signed with RS256 by a key of the issuer's JWKS (looked
/// up by `kid`), it has not expired, `iss` is an accepted issuer, `aud` is the configured
/// audience, and `email` is the expected service account with `email_verified: true`. Without
/// the email check any Google identity could mint a token for the audience.
///
/// Keys are cached by `kid` for as long as the JWKS response's `Cache-Control: max-age` allows
/// and fetched again when a token names an unknown `kid` (at most once per
/// [`OidcVerifierBuilder::with_min_refresh_interval`], so forged `kid`s cannot make the verifier
/// hammer the issuer). Cheap to share behind an `Arc`; verifications run concurrently.
///
/// ```no_run
/// # async fn handler(headers: http::HeaderMap) -> Result<(), cloud_tasks::receiver::VerifyError> {
/// use cloud_tasks::receiver::OidcVerifier;
///
/// // Production: Google's issuers and keys.
/// let verifier = OidcVerifier::builder(
///     "https://backend-abc123-uc.a.run.app",
///     "tasks-invoker@my-project.iam.gserviceaccount.com",
/// )
/// .build();
/// let token = verifier.verify_request(&headers).await?;
/// println!("called by {}", token.email);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct OidcVerifier {
    audience: String,
    email: String,
    issuers: Vec<String>,
    source: KeySource,
    leeway: Duration,
    min_refresh_interval: Duration,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent verifications with an unknown `kid` fetch once. Holds
    /// the JWKS URL once discovery has found it.
    refresh: tokio::sync::Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
enum KeySource {
    Jwks(String),
    Discovery { issuer: String },
}

#[derive(Debug)]
struct KeySet {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Instant,
    max_age: Duration,
}

impl KeySet {
    fn is_fresh(&self) -> bool {
        self.fetched_at.elapsed() < self.max_age
    }
}

/// Configures an [`OidcVerifier`]; by default it accepts Google's issuers and keys.
#[derive(Debug, Clone)]
#[must_use]
pub struct OidcVerifierBuilder {
    audience: String,
    email: String,
    issuer: Option<String>,
    jwks_url: Option<String>,
    leeway: Duration,
    min_refresh_interval: Duration,
}

impl OidcVerifier {
    /// A verifier for tokens whose `aud` is `audience` (the service URL the client enqueues
    /// with, without a trailing slash) and whose `email` is `service_account_email`.
    pub fn builder(
        audience: impl Into<String>,
        service_account_email: impl Into<String>,
    ) -> OidcVerifierBuilder {
        OidcVerifierBuilder {
            audience: audience.into(),
            email: service_account_email.into(),
            issuer: None,
            jwks_url: None,
            leeway: Duration::from_secs(10),
            min_refresh_interval: Duration::from_secs(10),
        }
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The service account tokens must name.
    pub fn service_account_email(&self) -> &str {
        &self.email
    }

    /// Verifies the bearer token of a request's `Authorization` header.
    ///
    /// # Errors
    /// [`VerifyError::MissingToken`] without a bearer token; otherwise see
    /// [`OidcVerifier::verify`].
    pub async fn verify_request(&self, headers: &HeaderMap) -> Result<VerifiedToken, VerifyError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                value
                    .split_once(' ')
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            })
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(VerifyError::MissingToken)?;
        self.verify(token).await
    }

    /// Verifies a raw ID token.
    ///
    /// # Errors
    /// A [`VerifyError`] naming the check that failed; it never contains the token.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|error| VerifyError::Malformed {
                reason: error.to_string(),
            })?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::UnsupportedAlgorithm {
                alg: format!("{:?}", header.alg),
            });
        }
        let kid = header.kid.ok_or(VerifyError::MissingKeyId)?;
        let key = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = self.leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Checked below, so that the error can say what the token carried.
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|error| VerifyError::from_jwt(error.into_kind()))?
            .claims;

        // jsonwebtoken requires these three, but parses the claims before it checks that.
        let missing = |claim: &str| VerifyError::MissingClaim {
            claim: claim.to_owned(),
        };
        let (iss, aud, exp) = (
            claims.iss.ok_or_else(|| missing("iss"))?,
            claims.aud.ok_or_else(|| missing("aud"))?,
            claims.exp.ok_or_else(|| missing("exp"))?,
        );
        if !self.issuers.contains(&iss) {
            return Err(VerifyError::WrongIssuer {
                found: iss,
                expected: self.issuers.clone(),
            });
        }
        if !aud.contains(&self.audience) {
            return Err(VerifyError::WrongAudience {
                found: aud.to_string(),
                expected: self.audience.clone(),
            });
        }
        if claims.email.as_deref() != Some(self.email.as_str()) {
            return Err(VerifyError::WrongEmail {
                found: claims.email,
                expected: self.email.clone(),
            });
        }
        if claims.email_verified != Some(true) {
            return Err(VerifyError::EmailNotVerified);
        }
        Ok(VerifiedToken {
            email: self.email.clone(),
            subject: claims.sub,
            issuer: iss,
            key_id: kid,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
        })
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        let usable = |set: &KeySet| set.keys.get(kid).filter(|_| set.is_fresh()).cloned();
        if let Some(key) = self.cached().as_deref().and_then(usable) {
            return Ok(key);
        }
        let mut jwks_url = self.refresh.lock().await;
        // Another verification may have fetched while this one waited for the lock.
        let cached = self.cached();
        if let Some(set) = cached.as_deref() {
            if let Some(key) = usable(set) {
                return Ok(key);
            }
            if set.is_fresh() && set.fetched_at.elapsed() < self.min_refresh_interval {
                return Err(VerifyError::UnknownKey {
                    kid: kid.to_owned(),
                });
            }
        }
        let url = match &*jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = self.resolve_jwks_url().await?;
                *jwks_url = Some(url.clone());
                url
            }
        };
        let set = Arc::new(self.fetch_keys(&url).await?);
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(set.clone());
        set.keys
            .get(kid)
            .cloned()
            .ok_or_else(|| VerifyError::UnknownKey {
                kid: kid.to_owned(),
            })
    }

    async fn resolve_jwks_url(&self) -> Result<String, VerifyError> {
        let issuer = match &self.source {
            KeySource::Jwks(url) => return Ok(url.clone()),
            KeySource::Discovery { issuer } => issuer,
        };
        let url = format!("{issuer}/.well-known/openid-configuration");
        let (body, _) = self.get(&url).await?;
        let document: Discovery =
            serde_json::from_slice(&body).map_err(|error| VerifyError::KeyFetch {
                url: url.clone(),
                reason: format!("not an OpenID discovery document: {error}"),
            })?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked.
        if document.issuer.trim_end_matches('/') != issuer {
            return Err(VerifyError::KeyFetch {
                url,
                reason: format!(
                    "the discovery document names issuer {:?}, not {issuer:?}",
                    document.issuer
                ),
            });
        }
        Ok(document.jwks_uri)
    }

    async fn fetch_keys(&self, url: &str) -> Result<KeySet, VerifyError> {
        let (body, max_age) = self.get(url).await?;
        let document: JwksDocument =
            serde_json::from_slice(&body).map_err(|error| VerifyError::KeyFetch {
                url: url.to_owned(),
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
                .unwrap_or(DEFAULT_KEYS_MAX_AGE)
                .max(self.min_refresh_interval),
        })
    }

    /// GETs `url`; returns the body and the response's `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), VerifyError> {
        let failed = |reason: String| VerifyError::KeyFetch {
            url: url.to_owned(),
            reason,
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|error| failed(error.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("answered {}", response.status())));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age);
        let body = response
            .bytes()
            .await
            .map_err(|error| failed(error.without_url().to_string()))?;
        Ok((body.to_vec(), max_age))
    }
}

impl OidcVerifierBuilder {
    /// Accepts tokens from this issuer instead of Google's, e.g. the emulator's
    /// `http://127.0.0.1:8123`. Keys come from its OpenID discovery document unless
    /// [`OidcVerifierBuilder::with_jwks_url`] names them.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into().trim_end_matches('/').to_owned());
        self
    }

    /// Fetches keys from this JWKS URL (default: Google's, or the issuer's discovery document).
    pub fn with_jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = Some(url.into());
        self
    }

    /// Clock skew tolerated on `exp` (default 10 s).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Least time between two key fetches caused by unknown `kid`s (default 10 s).
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Creates the verifier. Keys are fetched on the first verification.
    pub fn build(self) -> OidcVerifier {
        let (issuers, source) = match (self.issuer, self.jwks_url) {
            (Some(issuer), Some(url)) => (vec![issuer], KeySource::Jwks(url)),
            (Some(issuer), None) => (vec![issuer.clone()], KeySource::Discovery { issuer }),
            (None, url) => (
                GOOGLE_ISSUERS.map(str::to_owned).to_vec(),
                KeySource::Jwks(url.unwrap_or_else(|| GOOGLE_JWKS_URL.to_owned())),
            ),
        };
        OidcVerifier {
            audience: self.audience,
            email: self.email,
            issuers,
            source,
            leeway: self.leeway,
            min_refresh_interval: self.min_refresh_interval,
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(None),
        }
    }
}

/// `max-age` of a `Cache-Control` value, unless `no-store`/`no-cache` forbid reuse.
fn max_age(cache_control: &str) -> Option<Duration> {
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

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    sub: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
}

/// `aud` is a string in Google's tokens, but JWT allows a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|one| one == audience),
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(one) => write!(f, "{one:?}"),
            Self::Many(many) => write!(f, "{many:?}"),
        }
    }
}

/// What a verified token says about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedToken {
    /// The service account the token was issued to (the one the verifier expects).
    pub email: String,
    /// The account's unique ID (`sub`), when present.
    pub subject: Option<String>,
    /// The token's issuer (`iss`).
    pub issuer: String,
    /// The signing key (`kid`).
    pub key_id: String,
    /// When the token expires (`exp`).
    pub expires_at: SystemTime,
}

/// Why a token was rejected. Messages name the failed check and, for claims, what the token
/// carried and what was expected; they never contain the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `Authorization: Bearer` header.
    #[error("no OIDC token: the request has no `Authorization: Bearer` header")]
    MissingToken,
    /// Not a well-formed JWT, or a claim of the wrong type.
    #[error("OIDC token is malformed: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// Signed with another algorithm than RS256.
    #[error("OIDC token uses algorithm {alg}; only RS256 is accepted")]
    UnsupportedAlgorithm {
        /// The token's `alg`.
        alg: String,
    },
    /// The header names no signing key.
    #[error("OIDC token has no `kid` header, so its signing key cannot be found")]
    MissingKeyId,
    /// The issuer's JWKS has no key with the token's `kid`, even after fetching it again.
    #[error("OIDC token is signed by unknown key {kid:?}: not in the issuer's JWKS")]
    UnknownKey {
        /// The token's `kid`.
        kid: String,
    },
    /// The issuer's keys could not be fetched; the token may be fine. Answer 503 so that Cloud
    /// Tasks retries.
    #[error("cannot fetch the token issuer's keys from {url}: {reason}")]
    KeyFetch {
        /// The discovery or JWKS URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The signature does not match the key named by `kid`.
    #[error("OIDC token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("OIDC token has expired")]
    Expired,
    /// A required claim is absent.
    #[error("OIDC token has no `{claim}` claim")]
    MissingClaim {
        /// The claim's name.
        claim: String,
    },
    /// `iss` is not an accepted issuer.
    #[error("OIDC token issuer is {found:?}, expected one of {expected:?}")]
    WrongIssuer {
        /// The token's `iss`.
        found: String,
        /// The accepted issuers.
        expected: Vec<String>,
    },
    /// `aud` is not the configured audience.
    #[error(
        "OIDC token audience is {found}, expected {expected:?}; the client's service URL and \
         the receiver's audience must be the same string"
    )]
    WrongAudience {
        /// The token's `aud`.
        found: String,
        /// The configured audience.
        expected: String,
    },
    /// `email` is not the expected service account.
    #[error("OIDC token was issued to {found:?}, expected service account {expected:?}")]
    WrongEmail {
        /// The token's `email`, if any.
        found: Option<String>,
        /// The expected service account.
        expected: String,
    },
    /// `email_verified` is absent or false.
    #[error("OIDC token's email is not verified (`email_verified` is not true)")]
    EmailNotVerified,
}

impl VerifyError {
    fn from_jwt(kind: jsonwebtoken::errors::ErrorKind) -> Self {
        use jsonwebtoken::errors::ErrorKind;
        match kind {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::MissingRequiredClaim(claim) => Self::MissingClaim { claim },
            other => Self::Malformed {
                reason: jsonwebtoken::errors::Error::from(other).to_string(),
            },
        }
    }

    /// The failed check in a word (`"aud"`, `"exp"`, `"signature"`, ...), for logs and metrics.
    pub fn check(&self) -> &'static str {
        match self {
            Self::MissingToken => "token",
            Self::Malformed { .. } => "format",
            Self::UnsupportedAlgorithm { .. } => "alg",
            Self::MissingKeyId | Self::UnknownKey { .. } => "kid",
            Self::KeyFetch { .. } => "jwks",
            Self::BadSignature => "signature",
            Self::Expired => "exp",
            Self::MissingClaim { .. } => "claims",
            Self::WrongIssuer { .. } => "iss",
            Self::WrongAudience { .. } => "aud",
            Self::WrongEmail { .. } => "email",
            Self::EmailNotVerified => "email_verified",
        }
    }

    /// Whether the token could not be checked (keys unavailable) rather than being bad: the
    /// handler should answer 503 so that Cloud Tasks retries.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::KeyFetch { .. })
    }
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

    #[tokio::test]
    async fn missing_or_non_bearer_authorization_is_missing_token() {
        let verifier = OidcVerifier::builder("https://a.example", "sa@p.iam.gserviceaccount.com")
            .with_jwks_url("http://127.0.0.1:9/unused")
            .build();
        let mut headers = HeaderMap::new();
        assert_eq!(
            verifier.verify_request(&headers).await,
            Err(VerifyError::MissingToken)
        );
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic dXNlcjpwYXNz"),
        );
        assert_eq!(
            verifier.verify_request(&headers).await,
            Err(VerifyError::MissingToken)
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed_and_not_echoed() {
        let verifier = OidcVerifier::builder("https://a.example", "sa@p.iam.gserviceaccount.com")
            .with_jwks_url("http://127.0.0.1:9/unused")
            .build();
        let error = verifier.verify("not-a-jwt-secretvalue").await.unwrap_err();
        assert_eq!(error.check(), "format");
        assert!(!error.to_string().contains("secretvalue"), "{error}");
    }
}
