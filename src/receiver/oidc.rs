//! Verifies the OIDC ID token Cloud Tasks sends in `Authorization: Bearer ...`.
//!
//! Behind Cloud Run's invoker IAM the token arrives with its signature replaced by
//! [`SIGNATURE_REMOVED_BY_GOOGLE`]: Cloud Run checked it. Such a token is accepted only when the
//! verifier was told so (`CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN=true`), and then only after
//! every claim check; anywhere else anybody could write one.
//!
//! Why not `google_cloud_auth::credentials::idtoken::verifier`: it accepts only Google's issuers
//! (and IAP's ES256 one), so it cannot verify the emulator's tokens, and it takes the algorithm
//! from the token header. This verifier pins RS256, accepts exactly the configured issuers, and
//! reports which check failed. The cryptography is `jsonwebtoken`'s (on aws-lc-rs); the keys
//! come from `jwks.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::jwks::{CachePolicy, KeyCache, KeySource};
use crate::config::{CLOUD_RUN_SERVICE_VAR, OIDC_ISSUER_VAR, OIDC_VERIFIED_BY_CLOUD_RUN_VAR};
use crate::error::{ConfigError, ConfigProblem};
use crate::{SettingSource, Settings, validate};

/// The two `iss` values Google's ID tokens carry.
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];
/// Google's signing keys for ID tokens.
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// Keys are kept this long when the JWKS response has no `Cache-Control: max-age`.
const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// Default of [`OidcVerifierBuilder::with_fetch_timeout`].
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of [`OidcVerifierBuilder::with_max_stale`].
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(60 * 60);
/// Default of [`OidcVerifierBuilder::with_failure_ttl`].
pub const DEFAULT_FAILURE_TTL: Duration = Duration::from_secs(5);
/// Google's JWKS is about 2 KB; a response past this is refused rather than buffered.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// A token longer than this is refused before anything in it is decoded. Google's ID tokens are
/// about 1 KB; Cloud Run refuses requests whose headers pass 64 KiB altogether.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The signature segment of a token whose signature Cloud Run checked and then removed (Cloud
/// Run's troubleshooting page, "signature removed").
pub const SIGNATURE_REMOVED_BY_GOOGLE: &str = "SIGNATURE_REMOVED_BY_GOOGLE";
/// The header Cloud Run checks instead of `Authorization` when a request carries it (Cloud Run,
/// "Authenticating service-to-service"); it then passes `Authorization` on unchecked.
pub const SERVERLESS_AUTHORIZATION: &str = "x-serverless-authorization";
/// Claims, reasons and parser messages from a token are cut to this many characters in errors.
const MAX_UNTRUSTED_CHARS: usize = 100;
/// Connecting to the JWKS host gets at most this much of the fetch timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Verifies Cloud Tasks' OIDC tokens for one audience and one service account.
///
/// Checks, in order: the token is a JWT signed with RS256 by a key of the issuer's JWKS (looked
/// up by `kid`), it has not expired, `iss` is an accepted issuer, `aud` is the configured
/// audience, and `email` is the expected service account with `email_verified: true`. Without
/// the email check any Google identity could mint a token for the audience. Tokens longer than
/// [`MAX_TOKEN_BYTES`] are refused before anything in them is decoded.
///
/// Behind Cloud Run's invoker IAM, Cloud Run checks the signature itself and forwards the token
/// with the signature replaced by [`SIGNATURE_REMOVED_BY_GOOGLE`]. Built
/// [`with_verified_by_cloud_run`](OidcVerifierBuilder::with_verified_by_cloud_run) (or from
/// `CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN=true`), the verifier accepts such a token after every
/// other check, and reads `X-Serverless-Authorization` instead of `Authorization` when a request
/// carries it (see [`OidcVerifier::verify_request`]); without it, such a token is
/// [`VerifyError::SignatureRemoved`]. `docs/RECEIVING.md` says where that is safe.
///
/// Keys are cached by `kid` for the JWKS response's `Cache-Control: max-age` and rides out an
/// unreachable or slow issuer: past the max-age a cached key stays in use for
/// [`OidcVerifierBuilder::with_max_stale`] while one refresh runs in the background; a token
/// naming an unknown `kid` makes one fetch shared by every verification waiting for keys (at
/// most once per [`OidcVerifierBuilder::with_min_refresh_interval`], so forged `kid`s cannot
/// make the verifier hammer the issuer); a failed fetch is remembered for
/// [`OidcVerifierBuilder::with_failure_ttl`], during which unknown `kid`s are refused at once as
/// [unavailable](VerifyError::is_unavailable). Clones are cheap and share the cache.
///
/// ```no_run
/// # async fn handler(headers: http::HeaderMap) -> Result<(), Box<dyn std::error::Error>> {
/// use cloud_tasks::Settings;
/// use cloud_tasks::receiver::OidcVerifier;
///
/// // Production: Google's issuers and keys; the audience and account from the settings
/// // (CLOUD_RUN_SERVICE_URL, CLOUD_RUN_SERVICE_ACCOUNT). Build it once, at start-up.
/// let verifier = OidcVerifier::from_settings(&Settings::from_env()?).build()?;
/// let token = verifier.verify_request(&headers).await?;
/// println!("called by {}", token.email);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    audience: String,
    email: String,
    issuers: Vec<String>,
    leeway: Duration,
    verified_by_cloud_run: bool,
    keys: KeyCache,
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
    fetch_timeout: Duration,
    policy: CachePolicy,
    names: SettingNames,
    /// `Err` holds the message for a value of `CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN` that is
    /// neither `true` nor `false`.
    verified_by_cloud_run: Result<bool, String>,
    issuer_source: String,
    /// Set when the builder came from [`Settings`]: what they say about the platform.
    platform: Option<Platform>,
}

/// Where the backend runs, according to its settings.
#[derive(Debug, Clone)]
struct Platform {
    /// `K_SERVICE`: set on Cloud Run.
    cloud_run_service: Option<String>,
}

/// What a configuration error calls each value: the environment variable when the builder came
/// from [`Settings`], the builder method otherwise.
#[derive(Debug, Clone, Copy)]
struct SettingNames {
    audience: &'static str,
    email: &'static str,
    issuer: &'static str,
    verified_by_cloud_run: &'static str,
}

impl OidcVerifier {
    /// A verifier for tokens whose `aud` is `audience` (the service URL the client enqueues
    /// with; a trailing slash is dropped) and whose `email` is `service_account_email`, issued
    /// by Google.
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
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            policy: CachePolicy {
                min_refresh_interval: Duration::from_secs(10),
                max_stale: DEFAULT_MAX_STALE,
                failure_ttl: DEFAULT_FAILURE_TTL,
                default_max_age: DEFAULT_KEYS_MAX_AGE,
                max_response_bytes: MAX_JWKS_BYTES,
            },
            names: SettingNames {
                audience: "audience",
                email: "service account email",
                issuer: "issuer",
                verified_by_cloud_run: "verified by Cloud Run",
            },
            verified_by_cloud_run: Ok(false),
            issuer_source: "OidcVerifierBuilder::with_issuer".to_owned(),
            platform: None,
        }
    }

    /// The verifier the settings describe, the same values the client enqueues with: audience
    /// `CLOUD_RUN_SERVICE_URL`, service account `CLOUD_RUN_SERVICE_ACCOUNT`, and Google as the
    /// issuer unless `CLOUD_TASKS_OIDC_ISSUER` names another one (`https://`, or `http://` on
    /// a loopback host such as the local emulator's). `CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN`
    /// (`true` or `false`) is [`OidcVerifierBuilder::with_verified_by_cloud_run`].
    ///
    /// [`OidcVerifierBuilder::build`] reports every bad setting by its variable name, so a
    /// misconfigured backend fails at start-up. Besides each value's own rules, it refuses what
    /// is unsafe where the backend runs, judged by `K_SERVICE` (which Cloud Run sets): another
    /// issuer than Google on Cloud Run, and trusting Cloud Run's signature check anywhere else.
    pub fn from_settings(settings: &Settings) -> OidcVerifierBuilder {
        let mut builder = Self::builder(
            &settings.cloud_run_service_url,
            &settings.cloud_run_service_account,
        );
        builder.issuer = settings.oidc_issuer.clone();
        builder.issuer_source = settings
            .oidc_issuer_source
            .as_ref()
            .unwrap_or(&SettingSource::Lookup)
            .to_string();
        builder.names = SettingNames {
            audience: "CLOUD_RUN_SERVICE_URL",
            email: "CLOUD_RUN_SERVICE_ACCOUNT",
            issuer: OIDC_ISSUER_VAR,
            verified_by_cloud_run: OIDC_VERIFIED_BY_CLOUD_RUN_VAR,
        };
        builder.verified_by_cloud_run = match settings.oidc_verified_by_cloud_run.as_deref() {
            None => Ok(false),
            Some(value) if value.trim().eq_ignore_ascii_case("true") => Ok(true),
            Some(value) if value.trim().eq_ignore_ascii_case("false") => Ok(false),
            Some(value) => Err(format!(
                "{:?} is neither true nor false; set it to true only on a Cloud Run service with \
                 invoker IAM (authentication required), otherwise remove it",
                untrusted(value)
            )),
        };
        builder.platform = Some(Platform {
            cloud_run_service: settings.cloud_run_service.clone(),
        });
        builder
    }

    /// The audience tokens must carry.
    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// The service account tokens must name.
    pub fn service_account_email(&self) -> &str {
        &self.inner.email
    }

    /// The `iss` values accepted.
    pub fn issuers(&self) -> &[String] {
        &self.inner.issuers
    }

    /// Whether tokens whose signature Cloud Run removed are accepted (after every claim check).
    pub fn is_verified_by_cloud_run(&self) -> bool {
        self.inner.verified_by_cloud_run
    }

    /// Verifies the bearer token of a request.
    ///
    /// The token is the `Authorization` header's, except when the verifier trusts Cloud Run's
    /// check and the request carries `X-Serverless-Authorization`: Cloud Run then checked that
    /// header instead, removed its signature, and passed `Authorization` on unchecked, so
    /// `Authorization` is whatever the caller wrote and `X-Serverless-Authorization` is the
    /// token to verify. Cloud Tasks itself sends only `Authorization`.
    ///
    /// # Errors
    /// [`VerifyError::MissingToken`] without a bearer token; otherwise see
    /// [`OidcVerifier::verify`].
    pub async fn verify_request(&self, headers: &HeaderMap) -> Result<VerifiedToken, VerifyError> {
        let header =
            if self.inner.verified_by_cloud_run && headers.contains_key(SERVERLESS_AUTHORIZATION) {
                SERVERLESS_AUTHORIZATION
            } else {
                http::header::AUTHORIZATION.as_str()
            };
        let token = headers
            .get(header)
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
        let this = &*self.inner;
        // Before any decoding: the size of what is parsed, and of the messages about it.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::TooLarge { bytes: token.len() });
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| VerifyError::from_jwt(error.into_kind()))?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::UnsupportedAlgorithm {
                alg: format!("{:?}", header.alg),
            });
        }
        let signature_removed = token
            .rsplit_once('.')
            .is_some_and(|(_, signature)| signature == SIGNATURE_REMOVED_BY_GOOGLE);
        let (claims, signature) = if signature_removed {
            if !this.verified_by_cloud_run {
                return Err(VerifyError::SignatureRemoved);
            }
            // Cloud Run checked the signature; every claim is still checked below.
            let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token)
                .map_err(|error| VerifyError::from_jwt(error.into_kind()))?;
            (claims, SignatureCheck::CloudRun)
        } else {
            let kid = header.kid.clone().ok_or(VerifyError::MissingKeyId)?;
            let key = this.keys.key(&kid).await?;
            let mut validation = Validation::new(Algorithm::RS256);
            validation.leeway = this.leeway.as_secs();
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            // Checked below, so that the error can say what the token carried.
            validation.validate_aud = false;
            let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
                .map_err(|error| VerifyError::from_jwt(error.into_kind()))?
                .claims;
            (claims, SignatureCheck::Verifier)
        };

        // jsonwebtoken requires these three, but parses the claims before it checks that.
        let missing = |claim: &str| VerifyError::MissingClaim {
            claim: claim.to_owned(),
        };
        let (iss, aud, exp) = (
            claims.iss.ok_or_else(|| missing("iss"))?,
            claims.aud.ok_or_else(|| missing("aud"))?,
            claims.exp.ok_or_else(|| missing("exp"))?,
        );
        // jsonwebtoken checks `exp` of a signed token too; a token whose signature Cloud Run
        // removed has only this check.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if exp.saturating_add(this.leeway.as_secs()) < now {
            return Err(VerifyError::Expired);
        }
        let expires_at = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(exp))
            .ok_or_else(|| VerifyError::Malformed {
                reason: format!("`exp` {exp} is past the end of time this system can represent"),
            })?;
        if !this.issuers.contains(&iss) {
            return Err(VerifyError::WrongIssuer {
                found: untrusted(&iss),
                expected: this.issuers.clone(),
            });
        }
        if !aud.contains(&this.audience) {
            return Err(VerifyError::WrongAudience {
                found: untrusted(&aud.to_string()),
                expected: this.audience.clone(),
            });
        }
        if claims.email.as_deref() != Some(this.email.as_str()) {
            return Err(VerifyError::WrongEmail {
                found: claims.email.as_deref().map(untrusted),
                expected: this.email.clone(),
            });
        }
        if claims.email_verified != Some(true) {
            return Err(VerifyError::EmailNotVerified);
        }
        Ok(VerifiedToken {
            email: this.email.clone(),
            subject: claims.sub,
            issuer: iss,
            key_id: header.kid,
            expires_at,
            signature,
        })
    }
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("audience", &self.inner.audience)
            .field("email", &self.inner.email)
            .field("issuers", &self.inner.issuers)
            .field("leeway", &self.inner.leeway)
            .field("verified_by_cloud_run", &self.inner.verified_by_cloud_run)
            .field("keys", &self.inner.keys)
            .finish()
    }
}

impl OidcVerifierBuilder {
    /// Accepts tokens from this issuer instead of Google's, e.g. the emulator's
    /// `http://127.0.0.1:8123`. It must be a bare `https://` origin, or `http://` on a loopback
    /// host (`localhost`, `127.0.0.0/8`, `[::1]`): plain http from anywhere else would let
    /// whoever sits on the path mint tokens. Keys come from its OpenID discovery document
    /// unless [`OidcVerifierBuilder::with_jwks_url`] names them.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Fetches keys from this JWKS URL (default: Google's, or the issuer's discovery document);
    /// `https://`, or `http://` on a loopback host.
    pub fn with_jwks_url(mut self, url: impl Into<String>) -> Self {
        self.jwks_url = Some(url.into());
        self
    }

    /// Accepts tokens whose signature segment is [`SIGNATURE_REMOVED_BY_GOOGLE`] after every
    /// claim check (default: refused, 401). Cloud Run replaces the signature with it after
    /// checking the token itself, which it does only when invoker IAM is on (authentication
    /// required). Turn this on only there: anywhere else such a token is a forgery anyone can
    /// write. Fully signed tokens are still verified in full.
    pub fn with_verified_by_cloud_run(mut self, verified: bool) -> Self {
        self.verified_by_cloud_run = Ok(verified);
        self
    }

    /// Clock skew tolerated on `exp` (default 10 s).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Least time between two key fetches caused by unknown `kid`s, and least time keys are
    /// kept whatever their `max-age` says (default 10 s).
    pub fn with_min_refresh_interval(mut self, interval: Duration) -> Self {
        self.policy.min_refresh_interval = interval;
        self
    }

    /// How long past their `max-age` cached keys stay in use while they cannot be refreshed
    /// (default [`DEFAULT_MAX_STALE`]). The bound on how long a key the issuer has withdrawn
    /// could still be accepted during an outage of its JWKS.
    pub fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.policy.max_stale = max_stale;
        self
    }

    /// How long a failed key fetch is remembered (default [`DEFAULT_FAILURE_TTL`]): meanwhile
    /// tokens that need new keys are refused at once as unavailable instead of each waiting for
    /// a fetch of its own.
    pub fn with_failure_ttl(mut self, ttl: Duration) -> Self {
        self.policy.failure_ttl = ttl;
        self
    }

    /// Budget of one key fetch, connecting included (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Creates the verifier. Keys are fetched on the first verification.
    ///
    /// # Errors
    /// A [`ConfigError`] naming every bad value (by its environment variable when the builder
    /// came from [`OidcVerifier::from_settings`]): an audience that is not an `https` URL (or
    /// `http` on a loopback host), a malformed service account, an issuer or JWKS URL outside
    /// the rules of [`OidcVerifierBuilder::with_issuer`], or an HTTP client that cannot be
    /// built.
    pub fn build(self) -> Result<OidcVerifier, ConfigError> {
        let mut problems = Vec::new();
        let mut check = |setting: &'static str, result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(ConfigProblem { setting, message });
            }
        };
        let audience = validate::service_url(&self.audience);
        check(
            self.names.audience,
            audience.as_ref().map(drop).map_err(|message| {
                message.replacen("service URL", "audience (the service URL)", 1)
            }),
        );
        check(
            self.names.email,
            validate::service_account_email(&self.email),
        );
        let issuer = self
            .issuer
            .as_deref()
            .map(|issuer| issuer.trim_end_matches('/').to_owned());
        if let Some(issuer) = &issuer {
            check(self.names.issuer, check_issuer(issuer));
        }
        let verified_by_cloud_run = self.verified_by_cloud_run.clone();
        check(
            self.names.verified_by_cloud_run,
            verified_by_cloud_run
                .as_ref()
                .map(drop)
                .map_err(Clone::clone),
        );
        let verified_by_cloud_run = verified_by_cloud_run.unwrap_or(false);
        if let Some(platform) = &self.platform {
            match (&platform.cloud_run_service, &issuer) {
                (Some(service), Some(issuer)) => check(
                    self.names.issuer,
                    Err(format!(
                        "issuer {issuer:?} (from {}) is not Google, and {CLOUD_RUN_SERVICE_VAR} \
                         ({service:?}) says this runs on Cloud Run, where Cloud Tasks' tokens \
                         come from Google; remove {OIDC_ISSUER_VAR} there (it is for the local \
                         emulator)",
                        self.issuer_source
                    )),
                ),
                (None, _) if verified_by_cloud_run => check(
                    self.names.verified_by_cloud_run,
                    Err(format!(
                        "is true but {CLOUD_RUN_SERVICE_VAR} is unset, so this is not Cloud Run \
                         and nothing checked the signature of the tokens it would accept; set it \
                         only on a Cloud Run service with invoker IAM (authentication required)"
                    )),
                ),
                _ => {}
            }
        }
        if let Some(url) = &self.jwks_url {
            check("JWKS URL", check_key_url(url));
        }
        let http = jwks_tls().and_then(|tls| {
            reqwest::Client::builder()
                // reqwest's platform verifier alone fails every fetch in an image without CA
                // certificates; these are the gRPC transport's roots, webpki's included.
                .tls_backend_preconfigured(tls)
                .timeout(self.fetch_timeout)
                .connect_timeout(self.fetch_timeout.min(CONNECT_TIMEOUT))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|error| error.to_string())
        });
        check(
            "JWKS HTTP client",
            http.as_ref()
                .map(drop)
                .map_err(|error| format!("cannot build the HTTP client for key fetches: {error}")),
        );
        let (Ok(audience), Ok(http), true) = (audience, http, problems.is_empty()) else {
            return Err(ConfigError::new(problems));
        };
        if let Some(issuer) = &issuer {
            tracing::warn!(
                issuer,
                source = %self.issuer_source,
                "accepting OIDC tokens from an issuer other than Google: right for the local \
                 emulator, wrong in production, where Cloud Tasks' tokens come from Google"
            );
        }
        if verified_by_cloud_run {
            tracing::info!(
                "accepting OIDC tokens whose signature Cloud Run checked and removed \
                 (SIGNATURE_REMOVED_BY_GOOGLE), after checking their claims: safe only behind \
                 Cloud Run's invoker IAM"
            );
        }
        let (issuers, source) = match (issuer, self.jwks_url) {
            (Some(issuer), Some(url)) => (vec![issuer], KeySource::Jwks(url)),
            (Some(issuer), None) => (vec![issuer.clone()], KeySource::Discovery { issuer }),
            (None, url) => (
                GOOGLE_ISSUERS.map(str::to_owned).to_vec(),
                KeySource::Jwks(url.unwrap_or_else(|| GOOGLE_JWKS_URL.to_owned())),
            ),
        };
        Ok(OidcVerifier {
            inner: Arc::new(Inner {
                audience,
                email: self.email,
                issuers,
                leeway: self.leeway,
                verified_by_cloud_run,
                keys: KeyCache::new(source, http, self.policy),
            }),
        })
    }
}

/// TLS for key fetches: the bundled webpki roots and the platform's.
fn jwks_tls() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(crate::transport::root_certificates())
        .with_no_client_auth())
}

/// A non-Google issuer: a bare origin, `https`, or `http` on a loopback host.
fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = trusted_url(issuer, "issuer")?;
    if url.path() != "/" {
        return Err(format!(
            "issuer {issuer:?} has a path; use the bare origin, e.g. https://issuer.example or \
             http://127.0.0.1:8123"
        ));
    }
    Ok(())
}

/// Where keys may come from: `https`, or `http` on a loopback host.
pub(super) fn check_key_url(url: &str) -> Result<(), String> {
    trusted_url(url, "JWKS URL").map(drop)
}

fn trusted_url(value: &str, what: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value)
        .map_err(|error| format!("{what} {value:?} is not an absolute URL ({error})"))?;
    // Checked first, so that no message below repeats a password.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{what} carries credentials; remove them"));
    }
    let host = url.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{what} {value:?} has no host"));
    }
    match url.scheme() {
        "https" => {}
        "http" if validate::is_loopback(host) => {}
        "http" => {
            return Err(format!(
                "{what} {value:?} uses plain http on a non-loopback host; use https (http is \
                 accepted only for localhost, 127.0.0.0/8 and [::1], e.g. the local emulator)"
            ));
        }
        scheme => return Err(format!("{what} {value:?} has scheme {scheme:?}; use https")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{what} {value:?} has a query or fragment"));
    }
    Ok(url)
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
    /// The signing key (`kid`), as the token's header names it.
    pub key_id: Option<String>,
    /// When the token expires (`exp`).
    pub expires_at: SystemTime,
    /// Who checked the signature.
    pub signature: SignatureCheck,
}

/// Who checked a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureCheck {
    /// This verifier, against the issuer's keys.
    Verifier,
    /// Cloud Run's invoker IAM, which removed it ([`SIGNATURE_REMOVED_BY_GOOGLE`]); accepted
    /// because the verifier was built [`with_verified_by_cloud_run`](OidcVerifierBuilder::with_verified_by_cloud_run).
    CloudRun,
}

/// Why a token was rejected. Messages name the failed check and, for claims, what the token
/// carried and what was expected; they never contain the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `Authorization: Bearer` header.
    #[error("no OIDC token: the request has no `Authorization: Bearer` header")]
    MissingToken,
    /// Longer than [`MAX_TOKEN_BYTES`]; refused before decoding.
    #[error(
        "OIDC token is {bytes} bytes, over the {MAX_TOKEN_BYTES}-byte limit (Google's ID tokens \
         are about 1 KB)"
    )]
    TooLarge {
        /// The token's length.
        bytes: usize,
    },
    /// The signature is [`SIGNATURE_REMOVED_BY_GOOGLE`], and the verifier does not trust Cloud
    /// Run's check.
    #[error(
        "OIDC token's signature was removed by Google's front end (SIGNATURE_REMOVED_BY_GOOGLE), \
         which Cloud Run does after checking the token itself when invoker IAM is on; to accept \
         such tokens set CLOUD_TASKS_OIDC_VERIFIED_BY_CLOUD_RUN=true, which is safe only on a \
         Cloud Run service with invoker IAM (authentication required): anywhere else anyone can \
         write such a token"
    )]
    SignatureRemoved,
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
            ErrorKind::MissingRequiredClaim(claim) => Self::MissingClaim {
                claim: untrusted(&claim),
            },
            // serde's messages quote the token's JSON, which its sender chose.
            other => Self::Malformed {
                reason: untrusted(&jsonwebtoken::errors::Error::from(other).to_string()),
            },
        }
    }

    /// The failed check in a word (`"aud"`, `"exp"`, `"signature"`, ...), for logs and metrics.
    pub fn check(&self) -> &'static str {
        match self {
            Self::MissingToken => "token",
            Self::Malformed { .. } | Self::TooLarge { .. } => "format",
            Self::SignatureRemoved => "signature",
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

/// Text the token's sender chose (a claim, a parser's message quoting the token), made fit for
/// a log line: control and bidirectional-formatting characters escaped, and cut to
/// [`MAX_UNTRUSTED_CHARS`] characters.
pub(super) fn untrusted(text: &str) -> String {
    let mut safe = String::with_capacity(text.len().min(MAX_UNTRUSTED_CHARS * 2));
    for (index, character) in text.chars().enumerate() {
        if index == MAX_UNTRUSTED_CHARS {
            safe.push_str("...");
            break;
        }
        if character.is_control()
            || matches!(character, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            safe.extend(character.escape_default());
        } else {
            safe.push(character);
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(untrusted("a\nb\u{202e}c"), "a\\nb\\u{202e}c");
        let long = "x".repeat(500);
        assert_eq!(
            untrusted(&long),
            format!("{}...", "x".repeat(MAX_UNTRUSTED_CHARS))
        );
    }

    #[tokio::test]
    async fn missing_or_non_bearer_authorization_is_missing_token() {
        let verifier = OidcVerifier::builder("https://a.example", "sa@p.iam.gserviceaccount.com")
            .with_jwks_url("http://127.0.0.1:9/unused")
            .build()
            .unwrap();
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
            .build()
            .unwrap();
        let error = verifier.verify("not-a-jwt-secretvalue").await.unwrap_err();
        assert_eq!(error.check(), "format");
        assert!(!error.to_string().contains("secretvalue"), "{error}");
    }
}
