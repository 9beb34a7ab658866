//! The OIDC verifier against a local issuer: our own RSA keys, tokens signed with
//! `jsonwebtoken`, and a JWKS served over HTTP on 127.0.0.1:0. Every check must reject the token
//! that breaks it, and say which check failed without echoing the token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloud_tasks::receiver::{
    self, GOOGLE_ISSUERS, MAX_TOKEN_BYTES, OidcVerifier, Rejection, SERVERLESS_AUTHORIZATION,
    SIGNATURE_REMOVED_BY_GOOGLE, SignatureCheck, VerifiedToken, VerifyError,
};
use cloud_tasks::{
    CLOUD_RUN_SERVICE_VAR, OIDC_ISSUER_VAR, OIDC_VERIFIED_BY_CLOUD_RUN_VAR, ProcessDocumentPayload,
    Settings,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "common/subscriber.rs"]
mod subscriber;

const AUDIENCE: &str = "https://backend-abc123-uc.a.run.app";
const EMAIL: &str = "tasks-invoker@my-project.iam.gserviceaccount.com";

/// An RSA key with its `kid`.
struct TestKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn generate(kid: &str) -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let public = pair.public_key();
        Self {
            kid: kid.to_owned(),
            // jsonwebtoken's aws-lc backend reads PKCS#1; aws-lc writes PKCS#8 around it.
            encoding: EncodingKey::from_rsa_der(pkcs1_in_pkcs8(pkcs8.as_ref())),
            jwk: json!({
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`:
/// SEQUENCE { INTEGER version, SEQUENCE algorithm, OCTET STRING privateKey }.
fn pkcs1_in_pkcs8(der: &[u8]) -> &[u8] {
    let (info, _) = der_element(der, 0x30);
    let (_, rest) = der_element(info, 0x02);
    let (_, rest) = der_element(rest, 0x30);
    der_element(rest, 0x04).0
}

/// (contents, rest) of the DER element at the start of `input`, which must have `tag`.
fn der_element(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(input[0], tag, "unexpected DER tag");
    let (length, header) = match input[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let count = usize::from(long & 0x7f);
            let length = input[2..2 + count]
                .iter()
                .fold(0, |length, byte| length << 8 | usize::from(*byte));
            (length, 2 + count)
        }
    };
    (&input[header..header + length], &input[header + length..])
}

/// How the local issuer answers.
#[derive(Debug, Clone, Default)]
struct Behaviour {
    /// Answer 500 to every request.
    broken: bool,
    /// Read requests and never answer (a hung server).
    hang: bool,
    /// Wait this long before answering.
    delay: Duration,
    /// The JWKS response's `Cache-Control`.
    cache_control: Option<String>,
    /// Bytes of padding added to the JWKS document.
    padding: usize,
}

/// A local OIDC issuer: discovery document and JWKS, with a count of JWKS requests.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_fetches: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl Issuer {
    /// Serves discovery and a JWKS with `keys` on 127.0.0.1:0, one task per connection.
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Self {
            url: url.clone(),
            keys: Arc::new(Mutex::new(keys.iter().map(|key| key.jwk.clone()).collect())),
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
            behaviour: Arc::default(),
        };
        let (keys, fetches, behaviour) = (
            issuer.keys.clone(),
            issuer.jwks_fetches.clone(),
            issuer.behaviour.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (keys, fetches, behaviour, url) = (
                    keys.clone(),
                    fetches.clone(),
                    behaviour.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    answer(stream, &url, &keys, &fetches, &behaviour).await;
                });
            }
        });
        issuer
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.behaviour.lock().unwrap());
    }

    fn publish(&self, key: &TestKey) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// A verifier for this issuer, fetching again on every unknown `kid`.
    fn verifier(&self) -> OidcVerifier {
        OidcVerifier::builder(AUDIENCE, EMAIL)
            .with_issuer(&self.url)
            .with_min_refresh_interval(Duration::ZERO)
            .build()
            .unwrap()
    }

    /// Claims Cloud Tasks would send for our audience and service account.
    fn claims(&self) -> Value {
        let now = now();
        json!({
            "aud": AUDIENCE,
            "azp": "112233445566778899000",
            "email": EMAIL,
            "email_verified": true,
            "exp": now + 3600,
            "iat": now,
            "iss": self.url,
            "sub": "112233445566778899000",
        })
    }
}

/// Answers one request on `stream` as `behaviour` says.
async fn answer(
    mut stream: tokio::net::TcpStream,
    url: &str,
    keys: &Mutex<Vec<Value>>,
    fetches: &AtomicUsize,
    behaviour: &Mutex<Behaviour>,
) {
    let mut buffer = vec![0; 16 * 1024];
    let Ok(read) = stream.read(&mut buffer).await else {
        return;
    };
    let request = String::from_utf8_lossy(&buffer[..read]);
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    if path == "/jwks" {
        fetches.fetch_add(1, Ordering::SeqCst);
    }
    let behaviour = behaviour.lock().unwrap().clone();
    if behaviour.hang {
        // Hold the connection open, unanswered, until the client gives up.
        let mut rest = [0; 1024];
        while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {}
        return;
    }
    tokio::time::sleep(behaviour.delay).await;
    let mut extra = String::new();
    let (status, body) = if behaviour.broken {
        ("500 Internal Server Error", "{}".to_owned())
    } else if path == "/.well-known/openid-configuration" {
        let document = json!({ "issuer": url, "jwks_uri": format!("{url}/jwks") });
        ("200 OK", document.to_string())
    } else if path == "/jwks" {
        if let Some(cache_control) = &behaviour.cache_control {
            extra = format!("Cache-Control: {cache_control}\r\n");
        }
        let keys = keys.lock().unwrap().clone();
        let padding = "x".repeat(behaviour.padding);
        (
            "200 OK",
            json!({ "keys": keys, "padding": padding }).to_string(),
        )
    } else {
        ("404 Not Found", "{}".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await.ok();
    stream.shutdown().await.ok();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

/// Asserts that `token` is rejected by `check`, and that the message does not contain it.
async fn assert_rejected(verifier: &OidcVerifier, token: &str, check: &str) -> VerifyError {
    let error = verifier.verify(token).await.unwrap_err();
    assert_eq!(error.check(), check, "{error}");
    let message = format!("{error} {error:?}");
    let mut segments = token.rsplit('.');
    let (signature, payload) = (
        segments.next().unwrap(),
        segments.next().unwrap_or_default(),
    );
    if signature != SIGNATURE_REMOVED_BY_GOOGLE {
        assert!(!message.contains(signature), "{message}");
    }
    if payload.len() > 8 {
        assert!(!message.contains(payload), "{message}");
    }
    error
}

#[tokio::test]
async fn a_valid_token_is_accepted_with_keys_from_discovery() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();

    let verified = verifier.verify(&key.sign(&issuer.claims())).await.unwrap();
    assert_eq!(verified.email, EMAIL);
    assert_eq!(verified.issuer, issuer.url);
    assert_eq!(verified.key_id.as_deref(), Some("key-1"));
    assert_eq!(verified.subject.as_deref(), Some("112233445566778899000"));
    assert!(verified.expires_at > SystemTime::now());
    assert_eq!(issuer.fetches(), 1);
}

#[tokio::test]
async fn keys_are_cached_by_kid_and_fetched_again_for_an_unknown_kid() {
    let first = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&first]).await;
    let verifier = issuer.verifier();
    verifier
        .verify(&first.sign(&issuer.claims()))
        .await
        .unwrap();
    verifier
        .verify(&first.sign(&issuer.claims()))
        .await
        .unwrap();
    assert_eq!(issuer.fetches(), 1, "a known kid is served from the cache");

    // The issuer rotates: a token with the new kid makes the verifier fetch the JWKS again.
    let second = TestKey::generate("key-2");
    issuer.publish(&second);
    let verified = verifier
        .verify(&second.sign(&issuer.claims()))
        .await
        .unwrap();
    assert_eq!(verified.key_id.as_deref(), Some("key-2"));
    assert_eq!(issuer.fetches(), 2);
    verifier
        .verify(&first.sign(&issuer.claims()))
        .await
        .unwrap();
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test]
async fn a_token_signed_by_an_unknown_key_is_rejected_after_one_refresh() {
    let known = TestKey::generate("known");
    let stranger = TestKey::generate("stranger");
    let issuer = Issuer::start(&[&known]).await;
    let verifier = issuer.verifier();

    let error = assert_rejected(&verifier, &stranger.sign(&issuer.claims()), "kid").await;
    assert_eq!(
        error,
        VerifyError::UnknownKey {
            kid: "stranger".to_owned()
        }
    );
    assert_eq!(issuer.fetches(), 1);
    assert_rejected(&verifier, &stranger.sign(&issuer.claims()), "kid").await;
    assert_eq!(issuer.fetches(), 2, "an unknown kid refreshes the keys");
}

#[tokio::test]
async fn refreshes_for_unknown_kids_are_rate_limited() {
    let known = TestKey::generate("known");
    let issuer = Issuer::start(&[&known]).await;
    let verifier = OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_issuer(&issuer.url)
        .with_min_refresh_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    verifier
        .verify(&known.sign(&issuer.claims()))
        .await
        .unwrap();
    for attempt in 0..3 {
        let forged = TestKey::generate(&format!("forged-{attempt}"));
        assert_rejected(&verifier, &forged.sign(&issuer.claims()), "kid").await;
    }
    assert_eq!(issuer.fetches(), 1);
}

#[tokio::test]
async fn a_known_kid_with_another_keys_signature_is_rejected() {
    let real = TestKey::generate("key-1");
    let mut impostor = TestKey::generate("other");
    impostor.kid = "key-1".to_owned();
    let issuer = Issuer::start(&[&real]).await;
    let error = assert_rejected(
        &issuer.verifier(),
        &impostor.sign(&issuer.claims()),
        "signature",
    )
    .await;
    assert_eq!(error, VerifyError::BadSignature);
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let claims = with(
        issuer.claims(),
        "aud",
        json!("https://other-service.a.run.app"),
    );
    let error = assert_rejected(&issuer.verifier(), &key.sign(&claims), "aud").await;
    let message = error.to_string();
    assert!(
        message.contains("https://other-service.a.run.app"),
        "{message}"
    );
    assert!(message.contains(AUDIENCE), "{message}");
}

#[tokio::test]
async fn an_audience_list_must_contain_the_audience() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    let listed = with(
        issuer.claims(),
        "aud",
        json!(["https://x.example", AUDIENCE]),
    );
    verifier.verify(&key.sign(&listed)).await.unwrap();
    let unlisted = with(issuer.claims(), "aud", json!(["https://x.example"]));
    assert_rejected(&verifier, &key.sign(&unlisted), "aud").await;
}

#[tokio::test]
async fn wrong_email_is_rejected() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    let other = with(
        issuer.claims(),
        "email",
        json!("someone@other-project.iam.gserviceaccount.com"),
    );
    let error = assert_rejected(&verifier, &key.sign(&other), "email").await;
    assert!(
        error.to_string().contains("someone@other-project"),
        "{error}"
    );

    let mut no_email = issuer.claims();
    no_email.as_object_mut().unwrap().remove("email");
    let error = assert_rejected(&verifier, &key.sign(&no_email), "email").await;
    assert_eq!(
        error,
        VerifyError::WrongEmail {
            found: None,
            expected: EMAIL.to_owned()
        }
    );
}

#[tokio::test]
async fn unverified_email_is_rejected() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    let unverified = with(issuer.claims(), "email_verified", json!(false));
    assert_rejected(&verifier, &key.sign(&unverified), "email_verified").await;
    let mut absent = issuer.claims();
    absent.as_object_mut().unwrap().remove("email_verified");
    assert_rejected(&verifier, &key.sign(&absent), "email_verified").await;
}

#[tokio::test]
async fn wrong_issuer_is_rejected() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    for wrong in ["https://accounts.google.com", "http://127.0.0.1:1", ""] {
        let claims = with(issuer.claims(), "iss", json!(wrong));
        let error = assert_rejected(&verifier, &key.sign(&claims), "iss").await;
        assert!(error.to_string().contains(&issuer.url), "{error}");
    }
    let mut absent = issuer.claims();
    absent.as_object_mut().unwrap().remove("iss");
    let error = assert_rejected(&verifier, &key.sign(&absent), "claims").await;
    assert_eq!(
        error,
        VerifyError::MissingClaim {
            claim: "iss".to_owned()
        }
    );
}

#[tokio::test]
async fn expired_tokens_are_rejected_beyond_the_leeway() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    let expired = with(issuer.claims(), "exp", json!(now() - 3600));
    let error = assert_rejected(&verifier, &key.sign(&expired), "exp").await;
    assert_eq!(error, VerifyError::Expired);
    // Within the default 10 s leeway: accepted.
    let just_expired = with(issuer.claims(), "exp", json!(now() - 2));
    verifier.verify(&key.sign(&just_expired)).await.unwrap();
}

#[tokio::test]
async fn only_rs256_is_accepted() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("key-1".to_owned());
    let token = jsonwebtoken::encode(
        &header,
        &issuer.claims(),
        &EncodingKey::from_secret(b"a shared secret"),
    )
    .unwrap();
    let error = assert_rejected(&issuer.verifier(), &token, "alg").await;
    assert!(error.to_string().contains("HS256"), "{error}");
    assert_eq!(issuer.fetches(), 0, "rejected before any key lookup");
}

#[tokio::test]
async fn google_mode_accepts_both_google_issuer_strings_only() {
    let key = TestKey::generate("google-key");
    let issuer = Issuer::start(&[&key]).await;
    // Google's issuers, with the keys served locally instead of from googleapis.com.
    let verifier = OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_jwks_url(format!("{}/jwks", issuer.url))
        .build()
        .unwrap();
    for google in ["https://accounts.google.com", "accounts.google.com"] {
        let claims = with(issuer.claims(), "iss", json!(google));
        let verified = verifier.verify(&key.sign(&claims)).await.unwrap();
        assert_eq!(verified.issuer, google);
    }
    assert_rejected(&verifier, &key.sign(&issuer.claims()), "iss").await;
}

#[tokio::test]
async fn unreachable_keys_are_a_retryable_failure() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    issuer.set(|b| b.broken = true);
    let verifier = OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_issuer(&issuer.url)
        .with_failure_ttl(Duration::ZERO)
        .build()
        .unwrap();
    let error = assert_rejected(&verifier, &key.sign(&issuer.claims()), "jwks").await;
    assert!(error.is_unavailable());
    assert!(error.to_string().contains("500"), "{error}");
    assert_eq!(
        Rejection::from(error).status_code(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Once the issuer answers again, the same verifier recovers.
    issuer.set(|b| b.broken = false);
    verifier.verify(&key.sign(&issuer.claims())).await.unwrap();
}

fn task_headers(token: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
        );
    }
    for (name, value) in [
        ("x-cloudtasks-queuename", "document-processing"),
        ("x-cloudtasks-taskname", "7405916112390226781"),
        ("x-cloudtasks-taskretrycount", "0"),
        ("x-cloudtasks-taskexecutioncount", "0"),
        ("x-cloudtasks-tasketa", "1764412345.5"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

#[tokio::test]
async fn receive_checks_token_then_headers_then_body() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    let token = key.sign(&issuer.claims());
    let payload = ProcessDocumentPayload {
        document_id: cloud_tasks::Uuid::new_v4(),
        filename: "résumé.pdf".to_owned(),
    };
    let body = payload.to_json_bytes();

    let delivery =
        receiver::receive::<ProcessDocumentPayload>(&verifier, &task_headers(Some(&token)), &body)
            .await
            .unwrap();
    assert_eq!(delivery.payload, payload);
    assert_eq!(delivery.context.task_name, "7405916112390226781");
    assert_eq!(delivery.token.email, EMAIL);

    let rejection =
        receiver::receive::<ProcessDocumentPayload>(&verifier, &task_headers(None), &body)
            .await
            .unwrap_err();
    assert_eq!(rejection, Rejection::Token(VerifyError::MissingToken));
    assert_eq!(rejection.status_code(), StatusCode::UNAUTHORIZED);

    let mut no_retry_count = task_headers(Some(&token));
    no_retry_count.remove("x-cloudtasks-taskretrycount");
    let rejection = receiver::receive::<ProcessDocumentPayload>(&verifier, &no_retry_count, &body)
        .await
        .unwrap_err();
    assert!(
        matches!(&rejection, Rejection::Headers(error) if error.header() == "x-cloudtasks-taskretrycount")
    );
    assert_eq!(rejection.status_code(), StatusCode::BAD_REQUEST);

    let rejection = receiver::receive::<ProcessDocumentPayload>(
        &verifier,
        &task_headers(Some(&token)),
        br#"{"document_id": "not-a-uuid", "filename": "x.pdf"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(rejection, Rejection::Payload { .. }),
        "{rejection}"
    );
    assert_eq!(rejection.status_code(), StatusCode::BAD_REQUEST);
}

/// Verifies every token at once, each on its own task; returns each result with its latency.
async fn verify_concurrently(
    verifier: &OidcVerifier,
    tokens: Vec<String>,
) -> Vec<(Result<VerifiedToken, VerifyError>, Duration)> {
    let mut set = tokio::task::JoinSet::new();
    for token in tokens {
        let verifier = verifier.clone();
        set.spawn(async move {
            let started = Instant::now();
            let result = verifier.verify(&token).await;
            (result, started.elapsed())
        });
    }
    set.join_all().await
}

/// Prints the latencies (run with `--nocapture` to see them) and returns the slowest.
fn report(label: &str, results: &[(Result<VerifiedToken, VerifyError>, Duration)]) -> Duration {
    let mut latencies: Vec<Duration> = results.iter().map(|(_, latency)| *latency).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{label}: {} verifications, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    at(1.0)
}

const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Keys fresh for 1 s, fetches bounded by [`FETCH_TIMEOUT`].
fn outage_verifier(issuer: &Issuer) -> OidcVerifier {
    issuer.set(|b| b.cache_control = Some("public, max-age=1".to_owned()));
    OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_issuer(&issuer.url)
        .with_min_refresh_interval(Duration::ZERO)
        .with_fetch_timeout(FETCH_TIMEOUT)
        .build()
        .unwrap()
}

/// The issuer goes down (as `down` says) once keys are cached; they expire; 200 deliveries
/// signed by the cached key arrive at once. Then tokens naming an unknown key arrive.
async fn ride_out_outage(label: &str, down: impl FnOnce(&mut Behaviour)) {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = outage_verifier(&issuer);
    verifier.verify(&key.sign(&issuer.claims())).await.unwrap();
    assert_eq!(issuer.fetches(), 1);

    issuer.set(down);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tokens = (0..200).map(|_| key.sign(&issuer.claims())).collect();
    let results = verify_concurrently(&verifier, tokens).await;
    let slowest = report(&format!("{label}, cached key past max-age"), &results);
    for (result, _) in &results {
        assert_eq!(result.as_ref().unwrap().key_id.as_deref(), Some("key-1"));
    }
    assert!(
        slowest < FETCH_TIMEOUT / 4,
        "no delivery waits for the fetch: slowest {slowest:?}"
    );

    // The one background refresh fails (at once, or after the fetch timeout); meanwhile and
    // after, a token naming a key the cache does not have is refused at once as unavailable.
    tokio::time::sleep(FETCH_TIMEOUT + Duration::from_millis(300)).await;
    assert_eq!(issuer.fetches(), 2, "one refresh for 200 deliveries");
    let stranger = TestKey::generate("key-2");
    let tokens = (0..50).map(|_| stranger.sign(&issuer.claims())).collect();
    let results = verify_concurrently(&verifier, tokens).await;
    let slowest = report(&format!("{label}, unknown kid"), &results);
    for (result, _) in &results {
        let error = result.as_ref().unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert_eq!(
            Rejection::from(error.clone()).status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    assert!(
        slowest < Duration::from_millis(200),
        "refused quickly: {slowest:?}"
    );
    assert_eq!(
        issuer.fetches(),
        2,
        "the remembered failure spares the issuer"
    );
    // Known-key deliveries are still accepted.
    verifier.verify(&key.sign(&issuer.claims())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_jwks_server_delays_no_delivery_signed_by_a_cached_key() {
    ride_out_outage("JWKS hung", |b| b.hang = true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_jwks_server_delays_no_delivery_signed_by_a_cached_key() {
    ride_out_outage("JWKS answering 500", |b| b.broken = true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_past_the_staleness_limit_are_not_used() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    issuer.set(|b| b.cache_control = Some("max-age=1".to_owned()));
    let verifier = OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_issuer(&issuer.url)
        .with_min_refresh_interval(Duration::ZERO)
        .with_max_stale(Duration::from_millis(300))
        .with_failure_ttl(Duration::ZERO)
        .build()
        .unwrap();
    verifier.verify(&key.sign(&issuer.claims())).await.unwrap();
    issuer.set(|b| b.broken = true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let error = assert_rejected(&verifier, &key.sign(&issuer.claims()), "jwks").await;
    assert!(error.is_unavailable());
    // Back up: the next delivery fetches and is accepted.
    issuer.set(|b| b.broken = false);
    verifier.verify(&key.sign(&issuer.claims())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_jwks_is_fetched_once_for_all_waiters_and_refreshed_in_the_background() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = outage_verifier(&issuer);
    let delay = Duration::from_millis(800);
    issuer.set(|b| b.delay = delay);

    // Cold cache: every delivery waits for the same fetch.
    let tokens = (0..50).map(|_| key.sign(&issuer.claims())).collect();
    let results = verify_concurrently(&verifier, tokens).await;
    let slowest = report("slow JWKS (800 ms), cold cache", &results);
    assert!(results.iter().all(|(result, _)| result.is_ok()));
    assert_eq!(issuer.fetches(), 1, "one fetch shared by 50 waiters");
    // Discovery and JWKS are two slow round trips; a second fetch would be two more.
    assert!(
        slowest < delay * 3,
        "nobody waited for a second fetch: {slowest:?}"
    );

    // Past max-age: deliveries use the cached key while one refresh runs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tokens = (0..50).map(|_| key.sign(&issuer.claims())).collect();
    let results = verify_concurrently(&verifier, tokens).await;
    let slowest = report("slow JWKS (800 ms), cached key past max-age", &results);
    assert!(results.iter().all(|(result, _)| result.is_ok()));
    assert!(
        slowest < delay / 2,
        "nobody waited for the refresh: {slowest:?}"
    );
    tokio::time::sleep(delay + Duration::from_millis(300)).await;
    assert_eq!(
        issuer.fetches(),
        2,
        "Cache-Control: max-age=1 made one refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_picked_up_by_one_fetch() {
    let old = TestKey::generate("2024-old");
    let issuer = Issuer::start(&[&old]).await;
    issuer.set(|b| b.cache_control = Some("public, max-age=3600".to_owned()));
    let verifier = OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_issuer(&issuer.url)
        .with_min_refresh_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    verifier.verify(&old.sign(&issuer.claims())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    verifier.verify(&old.sign(&issuer.claims())).await.unwrap();
    assert_eq!(issuer.fetches(), 1, "max-age=3600 keeps the keys");

    // The issuer rotates: the new key is published and the old one withdrawn. The first
    // deliveries signed by the new key fetch once, together.
    let new = TestKey::generate("2025-new");
    *issuer.keys.lock().unwrap() = vec![new.jwk.clone()];
    let tokens = (0..100).map(|_| new.sign(&issuer.claims())).collect();
    let results = verify_concurrently(&verifier, tokens).await;
    report("rotation, 100 deliveries with the new kid", &results);
    for (result, _) in &results {
        assert_eq!(result.as_ref().unwrap().key_id.as_deref(), Some("2025-new"));
    }
    assert_eq!(issuer.fetches(), 2);
    // The withdrawn key is refused without another fetch (within the refresh interval).
    assert_rejected(&verifier, &old.sign(&issuer.claims()), "kid").await;
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test]
async fn an_oversized_jwks_is_refused() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    issuer.set(|b| b.padding = cloud_tasks::receiver::MAX_JWKS_BYTES);
    let error = assert_rejected(&issuer.verifier(), &key.sign(&issuer.claims()), "jwks").await;
    assert!(error.to_string().contains("limit"), "{error}");
}

/// `token` as Cloud Run forwards it behind invoker IAM: its signature replaced by the marker.
fn signature_removed(token: &str) -> String {
    let (signed_part, _) = token.rsplit_once('.').unwrap();
    format!("{signed_part}.{SIGNATURE_REMOVED_BY_GOOGLE}")
}

/// A token nobody signed, with the marker where the signature goes: what a forger writes.
fn forged(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.{SIGNATURE_REMOVED_BY_GOOGLE}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn rs256_header() -> Value {
    json!({ "alg": "RS256", "kid": "key-1", "typ": "JWT" })
}

/// A verifier that trusts Cloud Run's signature check.
fn behind_cloud_run(issuer: &Issuer) -> OidcVerifier {
    OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_issuer(&issuer.url)
        .with_verified_by_cloud_run(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_token_whose_signature_cloud_run_removed_is_refused_without_the_opt_in() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    assert!(!verifier.is_verified_by_cloud_run());
    let token = signature_removed(&key.sign(&issuer.claims()));
    let error = assert_rejected(&verifier, &token, "signature").await;
    assert_eq!(error, VerifyError::SignatureRemoved);
    assert_eq!(
        Rejection::from(error.clone()).status_code(),
        StatusCode::UNAUTHORIZED
    );
    // The log line says what to set, and where it is safe.
    let message = error.to_string();
    for needed in [OIDC_VERIFIED_BY_CLOUD_RUN_VAR, "invoker IAM", "Cloud Run"] {
        assert!(message.contains(needed), "{message}");
    }
    assert_eq!(issuer.fetches(), 0, "refused before any key lookup");
}

#[tokio::test]
async fn behind_cloud_run_a_removed_signature_is_accepted_after_every_claim_check() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = behind_cloud_run(&issuer);
    assert!(verifier.is_verified_by_cloud_run());

    let verified = verifier
        .verify(&signature_removed(&key.sign(&issuer.claims())))
        .await
        .unwrap();
    assert_eq!(verified.signature, SignatureCheck::CloudRun);
    assert_eq!(verified.email, EMAIL);
    assert_eq!(verified.key_id.as_deref(), Some("key-1"));
    assert_eq!(issuer.fetches(), 0, "no keys needed for Cloud Run's tokens");

    // A forger can write any claims under the marker: each check still refuses.
    let claims = issuer.claims();
    for (name, value, check) in [
        ("aud", json!("https://other-service.a.run.app"), "aud"),
        ("iss", json!("https://issuer.example"), "iss"),
        ("exp", json!(now() - 3600), "exp"),
        (
            "email",
            json!("intruder@other.iam.gserviceaccount.com"),
            "email",
        ),
        ("email_verified", json!(false), "email_verified"),
    ] {
        let token = forged(&rs256_header(), &with(claims.clone(), name, value));
        assert_rejected(&verifier, &token, check).await;
    }
    let mut no_aud = claims.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_rejected(&verifier, &forged(&rs256_header(), &no_aud), "claims").await;
    let hs256 = json!({ "alg": "HS256", "typ": "JWT" });
    assert_rejected(&verifier, &forged(&hs256, &claims), "alg").await;

    // A fully signed token is still verified in full, and any other signature is refused.
    let signed = key.sign(&claims);
    let verified = verifier.verify(&signed).await.unwrap();
    assert_eq!(verified.signature, SignatureCheck::Verifier);
    let other_key = TestKey::generate("key-1");
    assert_rejected(&verifier, &other_key.sign(&claims), "signature").await;
    let (signed_part, _) = signed.rsplit_once('.').unwrap();
    for signature in [
        "signature_removed_by_google",
        "SIGNATURE_REMOVED_BY_GOOGLE_",
        "",
    ] {
        let token = format!("{signed_part}.{signature}");
        let error = verifier.verify(&token).await.unwrap_err();
        assert!(
            matches!(
                error,
                VerifyError::BadSignature | VerifyError::Malformed { .. }
            ),
            "{signature:?}: {error}"
        );
    }
}

#[tokio::test]
async fn behind_cloud_run_the_token_checked_is_the_one_in_x_serverless_authorization() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = behind_cloud_run(&issuer);
    let valid = signature_removed(&key.sign(&issuer.claims()));
    let intruder = forged(
        &rs256_header(),
        &with(
            issuer.claims(),
            "email",
            json!("intruder@other.iam.gserviceaccount.com"),
        ),
    );
    let headers = |authorization: &str, serverless: Option<&str>| {
        let mut headers = task_headers(Some(authorization));
        if let Some(token) = serverless {
            headers.insert(
                SERVERLESS_AUTHORIZATION,
                HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
            );
        }
        headers
    };

    // Cloud Run checked X-Serverless-Authorization and passed Authorization on unchecked: a
    // forged Authorization beside it is not what the verifier reads.
    let verified = verifier
        .verify_request(&headers(&intruder, Some(&valid)))
        .await
        .unwrap();
    assert_eq!(verified.email, EMAIL);
    // And the identity Cloud Run checked is the one judged.
    let error = verifier
        .verify_request(&headers(&valid, Some(&intruder)))
        .await
        .unwrap_err();
    assert_eq!(error.check(), "email");

    // Without the opt-in nothing is trusted unsigned: Authorization is verified in full.
    let error = issuer
        .verifier()
        .verify_request(&headers(&intruder, Some(&valid)))
        .await
        .unwrap_err();
    assert_eq!(error, VerifyError::SignatureRemoved);
}

#[tokio::test]
async fn an_oversized_token_is_refused_before_decoding() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let padded = with(
        issuer.claims(),
        "padding",
        json!("x".repeat(MAX_TOKEN_BYTES)),
    );
    let token = key.sign(&padded);
    let error = assert_rejected(&issuer.verifier(), &token, "format").await;
    assert_eq!(error, VerifyError::TooLarge { bytes: token.len() });
    assert_eq!(issuer.fetches(), 0);
}

#[tokio::test]
async fn what_the_sender_wrote_reaches_the_log_escaped_and_cut() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let verifier = issuer.verifier();
    // A header that is not JSON: serde's message quotes it.
    let injected = format!(
        "{{\"alg\": \"RS256\nlevel=ERROR forged log line{}",
        "y".repeat(2000)
    );
    let token = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(&injected),
        URL_SAFE_NO_PAD.encode(issuer.claims().to_string())
    );
    let error = assert_rejected(&verifier, &token, "format").await;
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.len() < 400, "{} bytes: {message}", message.len());

    let claims = with(
        issuer.claims(),
        "aud",
        json!(format!("x\nlevel=ERROR forged{}", "z".repeat(2000))),
    );
    let message = assert_rejected(&verifier, &key.sign(&claims), "aud")
        .await
        .to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.len() < 500, "{} bytes: {message}", message.len());
}

#[tokio::test]
async fn an_exp_past_the_end_of_time_is_refused_not_a_panic() {
    let key = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&key]).await;
    let claims = with(issuer.claims(), "exp", json!(u64::MAX));
    let error = assert_rejected(&issuer.verifier(), &key.sign(&claims), "format").await;
    assert!(error.to_string().contains("exp"), "{error}");
    let error = assert_rejected(
        &behind_cloud_run(&issuer),
        &forged(&rs256_header(), &claims),
        "format",
    )
    .await;
    assert!(error.to_string().contains("exp"), "{error}");
}

fn settings(vars: &[(&str, &str)]) -> Settings {
    let vars: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    Settings::from_lookup(|name| vars.get(name).cloned())
}

fn receiver_settings(issuer: Option<&str>) -> Settings {
    let mut vars = vec![
        (
            "CLOUD_RUN_SERVICE_URL",
            "https://backend-abc123-uc.a.run.app/",
        ),
        ("CLOUD_RUN_SERVICE_ACCOUNT", EMAIL),
    ];
    vars.extend(issuer.map(|issuer| (OIDC_ISSUER_VAR, issuer)));
    settings(&vars)
}

#[test]
fn settings_without_an_issuer_trust_google_only() {
    let verifier = OidcVerifier::from_settings(&receiver_settings(None))
        .build()
        .unwrap();
    assert_eq!(verifier.issuers(), GOOGLE_ISSUERS);
    assert_eq!(verifier.audience(), AUDIENCE, "trailing slash dropped");
    assert_eq!(verifier.service_account_email(), EMAIL);
}

#[test]
fn another_issuer_must_be_https_or_loopback_http() {
    for accepted in [
        "https://issuer.example",
        "https://issuer.example/",
        "http://127.0.0.1:8123",
        "http://127.8.9.10:8123",
        "http://localhost:8123",
        "http://[::1]:8123",
    ] {
        let verifier = OidcVerifier::from_settings(&receiver_settings(Some(accepted)))
            .build()
            .unwrap_or_else(|error| panic!("{accepted}: {error}"));
        assert_eq!(verifier.issuers(), [accepted.trim_end_matches('/')]);
    }
    for refused in [
        "http://issuer.example",
        "http://10.0.0.8:8123",
        "http://0.0.0.0:8123",
        "ftp://issuer.example",
        "issuer.example",
        "https://issuer.example/tenant",
        "https://issuer.example?x=1",
        "https://user:secret@issuer.example",
    ] {
        let error = OidcVerifier::from_settings(&receiver_settings(Some(refused)))
            .build()
            .unwrap_err();
        let named: Vec<_> = error.problems().iter().map(|p| p.setting).collect();
        assert_eq!(named, [OIDC_ISSUER_VAR], "{refused}: {error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}

#[test]
fn every_bad_receiver_setting_is_named_at_start_up() {
    let error = OidcVerifier::from_settings(&settings(&[
        ("CLOUD_RUN_SERVICE_URL", "http://backend.example"),
        ("CLOUD_RUN_SERVICE_ACCOUNT", "not-an-email"),
        (OIDC_ISSUER_VAR, "http://issuer.example"),
    ]))
    .build()
    .unwrap_err();
    let named: Vec<_> = error.problems().iter().map(|p| p.setting).collect();
    assert_eq!(
        named,
        [
            "CLOUD_RUN_SERVICE_URL",
            "CLOUD_RUN_SERVICE_ACCOUNT",
            OIDC_ISSUER_VAR
        ]
    );
    let error = OidcVerifier::from_settings(&settings(&[]))
        .build()
        .unwrap_err();
    let named: Vec<_> = error.problems().iter().map(|p| p.setting).collect();
    assert_eq!(
        named,
        ["CLOUD_RUN_SERVICE_URL", "CLOUD_RUN_SERVICE_ACCOUNT"]
    );
}

#[test]
fn the_cloud_run_opt_in_is_read_from_the_settings_and_only_on_cloud_run() {
    let base = [
        ("CLOUD_RUN_SERVICE_URL", AUDIENCE),
        ("CLOUD_RUN_SERVICE_ACCOUNT", EMAIL),
    ];
    let with_vars = |extra: &[(&'static str, &'static str)]| {
        let mut vars = base.to_vec();
        vars.extend_from_slice(extra);
        OidcVerifier::from_settings(&settings(&vars)).build()
    };
    let verifier = with_vars(&[
        (OIDC_VERIFIED_BY_CLOUD_RUN_VAR, "true"),
        (CLOUD_RUN_SERVICE_VAR, "backend"),
    ])
    .unwrap();
    assert!(verifier.is_verified_by_cloud_run());
    for off in [
        &[][..],
        &[(OIDC_VERIFIED_BY_CLOUD_RUN_VAR, "false")][..],
        &[
            (OIDC_VERIFIED_BY_CLOUD_RUN_VAR, "false"),
            (CLOUD_RUN_SERVICE_VAR, "backend"),
        ][..],
    ] {
        assert!(
            !with_vars(off).unwrap().is_verified_by_cloud_run(),
            "{off:?}"
        );
    }
    // A typo is not read as false.
    for typo in ["yes", "1", "ture"] {
        let error = with_vars(&[
            (OIDC_VERIFIED_BY_CLOUD_RUN_VAR, typo),
            (CLOUD_RUN_SERVICE_VAR, "backend"),
        ])
        .unwrap_err();
        assert_eq!(error.problems()[0].setting, OIDC_VERIFIED_BY_CLOUD_RUN_VAR);
        assert!(error.to_string().contains(typo), "{error}");
    }
    // Off Cloud Run nothing checked the signature: the opt-in is refused at start.
    let error = with_vars(&[(OIDC_VERIFIED_BY_CLOUD_RUN_VAR, "true")]).unwrap_err();
    assert_eq!(error.problems()[0].setting, OIDC_VERIFIED_BY_CLOUD_RUN_VAR);
    assert!(error.to_string().contains(CLOUD_RUN_SERVICE_VAR), "{error}");
}

#[test]
fn a_non_google_issuer_is_refused_on_cloud_run() {
    let error = OidcVerifier::from_settings(&settings(&[
        ("CLOUD_RUN_SERVICE_URL", AUDIENCE),
        ("CLOUD_RUN_SERVICE_ACCOUNT", EMAIL),
        (OIDC_ISSUER_VAR, "https://issuer.example"),
        (CLOUD_RUN_SERVICE_VAR, "backend"),
    ]))
    .build()
    .unwrap_err();
    let named: Vec<_> = error.problems().iter().map(|p| p.setting).collect();
    assert_eq!(named, [OIDC_ISSUER_VAR], "{error}");
    let message = error.to_string();
    assert!(message.contains("https://issuer.example"), "{message}");
    assert!(message.contains(CLOUD_RUN_SERVICE_VAR), "{message}");
}

/// Log lines written while `run` runs, as text.
fn logged(run: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let guard = subscriber::set_default(subscriber);
    run();
    drop(guard);
    String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
}

/// The fault: a thread with no subscriber reaches a `warn!` first, while this thread captures.
/// Without `subscriber::set_default`'s second dispatcher the callsite is cached as "never" and
/// the capture reads nothing (how CI once lost the next test's warning).
#[test]
fn a_capture_sees_a_warning_first_reached_by_a_thread_without_a_subscriber() {
    fn warn_once_reached() {
        tracing::warn!("reached");
    }
    let log = logged(|| {
        std::thread::spawn(warn_once_reached).join().unwrap();
        warn_once_reached();
    });
    assert!(log.contains("reached"), "captured: {log:?}");
}

#[test]
fn a_non_google_issuer_is_a_warning_at_start_naming_it_and_its_source() {
    let dotenv_directory =
        std::env::temp_dir().join(format!("cloud-tasks-oidc-{}", cloud_tasks::Uuid::new_v4()));
    std::fs::create_dir(&dotenv_directory).unwrap();
    let dotenv = dotenv_directory.join(".env");
    std::fs::write(
        &dotenv,
        format!(
            "CLOUD_RUN_SERVICE_URL={AUDIENCE}\nCLOUD_RUN_SERVICE_ACCOUNT={EMAIL}\n\
             {OIDC_ISSUER_VAR}=http://127.0.0.1:8123\n"
        ),
    )
    .unwrap();
    let from_file = Settings::from_env_and_file(&dotenv).unwrap();
    std::fs::remove_dir_all(&dotenv_directory).ok();
    let log = logged(|| {
        OidcVerifier::from_settings(&from_file).build().unwrap();
    });
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("http://127.0.0.1:8123"), "{log}");
    assert!(log.contains(&dotenv.display().to_string()), "{log}");

    let log = logged(|| {
        OidcVerifier::from_settings(&receiver_settings(None))
            .build()
            .unwrap();
    });
    assert!(!log.contains("WARN"), "Google needs no warning: {log}");
}

#[test]
fn a_jwks_url_must_be_https_or_loopback_http() {
    let error = OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_jwks_url("http://keys.example/jwks")
        .build()
        .unwrap_err();
    assert_eq!(error.problems()[0].setting, "JWKS URL");
    OidcVerifier::builder(AUDIENCE, EMAIL)
        .with_jwks_url("https://keys.example/jwks")
        .build()
        .unwrap();
}

/// `CloudTask<T>` in an axum router: the answers Cloud Tasks gets for each rejection and each
/// `TaskOutcome`, and that the handler runs only for verified requests.
#[cfg(feature = "axum")]
mod extractor {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::Router;
    use axum::extract::FromRef;
    use axum::routing::post;
    use cloud_tasks::ProcessDocumentPayload;
    use cloud_tasks::receiver::{CloudTask, OidcVerifier, TaskOutcome};
    use serde_json::json;

    use super::{AUDIENCE, Issuer, TestKey, task_headers, with};

    static HANDLED: AtomicUsize = AtomicUsize::new(0);

    #[derive(Clone)]
    struct State {
        verifier: OidcVerifier,
    }

    impl FromRef<State> for OidcVerifier {
        fn from_ref(state: &State) -> Self {
            state.verifier.clone()
        }
    }

    /// The outcome is chosen by the document's filename.
    async fn handler(task: CloudTask<ProcessDocumentPayload>) -> TaskOutcome {
        HANDLED.fetch_add(1, Ordering::SeqCst);
        match task.payload.filename.as_str() {
            "retry.pdf" => TaskOutcome::retry_after(Duration::from_secs(30)),
            "busy.pdf" => TaskOutcome::retry_later(),
            "gone.pdf" => TaskOutcome::give_up("the document was deleted"),
            _ => TaskOutcome::Done,
        }
    }

    /// Serves the handler with `verifier`; returns the task URL.
    async fn serve(verifier: OidcVerifier) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/task", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/task", post(handler))
            .with_state(State { verifier });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn body(filename: &str) -> String {
        json!({ "document_id": cloud_tasks::Uuid::new_v4(), "filename": filename }).to_string()
    }

    struct Answer {
        status: u16,
        retry_after: Option<String>,
        www_authenticate: Option<String>,
        text: String,
    }

    async fn post_task(url: &str, token: Option<&str>, body: String) -> Answer {
        let mut request = reqwest::Client::new().post(url).body(body);
        for (name, value) in &task_headers(token) {
            request = request.header(name.as_str(), value.to_str().unwrap());
        }
        let response = request.send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        Answer {
            status: response.status().as_u16(),
            retry_after: header("retry-after"),
            www_authenticate: header("www-authenticate"),
            text: response.text().await.unwrap(),
        }
    }

    #[tokio::test]
    async fn outcomes_and_rejections_are_the_statuses_cloud_tasks_acts_on() {
        let key = TestKey::generate("key-1");
        let issuer = Issuer::start(&[&key]).await;
        let url = serve(issuer.verifier()).await;
        let token = key.sign(&issuer.claims());
        let handled = || HANDLED.load(Ordering::SeqCst);

        // Outcomes: 2xx completes the task, anything else is retried.
        let done = post_task(&url, Some(&token), body("report.pdf")).await;
        assert_eq!((done.status, done.text.as_str()), (200, "done"));
        let retry = post_task(&url, Some(&token), body("retry.pdf")).await;
        assert_eq!(retry.status, 503);
        assert_eq!(retry.retry_after.as_deref(), Some("30"));
        let busy = post_task(&url, Some(&token), body("busy.pdf")).await;
        assert_eq!((busy.status, busy.retry_after), (503, None));
        let gone = post_task(&url, Some(&token), body("gone.pdf")).await;
        assert_eq!(
            gone.status, 200,
            "giving up must answer 2xx or Cloud Tasks retries"
        );
        assert_eq!(handled(), 4);

        // Rejections, before the handler runs.
        let missing = post_task(&url, None, body("x.pdf")).await;
        assert_eq!(missing.status, 401);
        assert_eq!(
            missing.www_authenticate.as_deref(),
            Some("Bearer"),
            "RFC 6750, 3.1: no error code when no token was sent"
        );
        assert_eq!(missing.text, "OIDC token rejected: token check failed");
        assert!(!answer_has_token(&done.text, &token) && !answer_has_token(&gone.text, &token));

        let other_audience = key.sign(&with(issuer.claims(), "aud", json!("https://x.example")));
        let answer = post_task(&url, Some(&other_audience), body("x.pdf")).await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.www_authenticate.as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        assert_eq!(answer.text, "OIDC token rejected: aud check failed");
        assert!(
            !answer.text.contains(AUDIENCE),
            "expected values stay in the log"
        );
        assert!(!answer_has_token(&answer.text, &other_audience));

        let other_account = key.sign(&with(
            issuer.claims(),
            "email",
            json!("intruder@other.iam.gserviceaccount.com"),
        ));
        let answer = post_task(&url, Some(&other_account), body("x.pdf")).await;
        assert_eq!(answer.status, 403, "a valid token of the wrong identity");
        assert_eq!(answer.text, "OIDC token rejected: email check failed");

        let mut headers = task_headers(Some(&token));
        headers.remove("x-cloudtasks-taskname");
        let mut request = reqwest::Client::new().post(&url).body(body("x.pdf"));
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.to_str().unwrap());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
        assert_eq!(
            response.text().await.unwrap(),
            "bad Cloud Tasks header x-cloudtasks-taskname"
        );

        let answer = post_task(&url, Some(&token), r#"{"filename": 7}"#.to_owned()).await;
        assert_eq!(
            (answer.status, answer.text.as_str()),
            (400, "task body is not the expected JSON")
        );

        assert_eq!(handled(), 4, "no rejected request reached the handler");
    }

    fn answer_has_token(text: &str, token: &str) -> bool {
        text.contains(token.rsplit('.').next().unwrap())
    }

    #[tokio::test]
    async fn unavailable_keys_answer_503_so_cloud_tasks_retries() {
        let key = TestKey::generate("key-1");
        let issuer = Issuer::start(&[&key]).await;
        issuer.set(|b| b.broken = true);
        let url = serve(issuer.verifier()).await;
        let answer = post_task(&url, Some(&key.sign(&issuer.claims())), body("x.pdf")).await;
        assert_eq!(answer.status, 503);
        assert!(answer.text.contains("retry later"), "{}", answer.text);
    }
}
