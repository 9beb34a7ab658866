//! The HTTP/2 connections every call goes through: a small pool on `h2`, under the generated
//! tonic stubs.
//!
//! Why not tonic's `Channel`: the crate must know, for every failed call, whether the request
//! may have reached Cloud Tasks (an unnamed task is sent again only if it cannot have), and the
//! channel hides that behind its own errors and queues. Here each outcome of h2 maps to one
//! answer (see [`NotSent`]): nothing handed to h2, a stream refused, a stream above a GOAWAY's
//! last-stream-id are "not sent"; everything else may have been processed.
//!
//! The pool follows gRPC's clients: a new connection takes calls once the server's SETTINGS are
//! in, then at most the peer's stream limit (100, Google's, if it announces none), another
//! connection when all are full,
//! up to a configured number; a connection that received GOAWAY takes no new call while its
//! calls finish; connections are made by a background task shared by every waiting call, so a
//! caller's deadline never cancels a handshake that others wait on. Idle connections are
//! checked with HTTP/2 PINGs (and TCP keepalive), so a connection that died silently is closed
//! before a call is put on it; an extra connection idle that long is closed instead.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::{Code, Status};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Flow-control windows this side advertises: as hyper's defaults, large enough that a batch
/// of 100 tasks or its answer never waits for a window update.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Streams allowed on a connection whose peer announces no limit: Google's front ends admit
/// 100, and h2 would otherwise assume no limit.
const INITIAL_STREAM_LIMIT: usize = 100;

/// After a connection attempt fails while other connections are up, the next attempt waits this
/// long; calls meanwhile wait for room on the connections that work.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How the connections are made and kept; set on `ClientBuilder`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_connections: usize,
    /// An idle connection gets a PING after this long; `None` sends none.
    pub(crate) keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub(crate) keepalive_timeout: Duration,
    pub(crate) tcp_keepalive: Option<Duration>,
    /// Addresses to connect to instead of resolving the endpoint's host.
    pub(crate) resolved_addresses: Option<Vec<IpAddr>>,
}

/// A cheap, cloneable handle on the pool of connections to one endpoint; a tower `Service`
/// that the generated stubs call.
#[derive(Clone)]
pub(crate) struct Http2Channel {
    shared: Arc<Shared>,
}

struct Shared {
    scheme: Scheme,
    authority: Authority,
    /// What the TCP connector is asked for: the endpoint, without its port when fixed
    /// addresses carry none (the connector then uses the scheme's).
    connect_uri: Uri,
    connector: HttpConnector<Resolver>,
    tls: Option<Tls>,
    options: ConnectionOptions,
    user_agent: HeaderValue,
    pool: Mutex<Pool>,
    /// Woken when room may have appeared: a call ended, a connection was made or retired, or
    /// a connection attempt ended.
    changed: Arc<Notify>,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

#[derive(Default)]
struct Pool {
    connections: Vec<PooledConnection>,
    /// A connection attempt is running in the background.
    connecting: bool,
    /// Connection attempts finished so far: tells a waiting call whether the attempt it waited
    /// for has ended.
    attempts_finished: u64,
    /// The failure of the last attempt, if it failed, and when.
    last_failure: Option<(Arc<str>, Instant)>,
}

struct PooledConnection {
    /// Never used to send (clones are): polling it only reports whether the connection still
    /// takes new streams (not after a GOAWAY or once closed).
    sender: SendRequest<Bytes>,
    state: Arc<ConnectionState>,
}

/// What calls and the connection's task share about one connection.
struct ConnectionState {
    in_flight: AtomicUsize,
    /// When a call last ended, in milliseconds since `opened`.
    last_used_ms: AtomicU64,
    opened: Instant,
    /// Asks the connection's task to check the connection with a PING now.
    check: Notify,
    pool_changed: Arc<Notify>,
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Security<'a> {
    /// Plaintext HTTP/2: emulators only.
    Plaintext,
    /// TLS, verifying the server against the system and webpki roots, plus `extra_ca` (PEM).
    Tls { extra_ca: Option<&'a [u8]> },
}

/// Why a channel could not be set up (a malformed endpoint, an unusable CA certificate).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("not a valid endpoint URI ({0}); expected e.g. https://cloudtasks.googleapis.com")]
    Uri(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// TLS was asked for an endpoint that is not `https`.
    #[error("a TLS connection needs an https:// endpoint")]
    NotHttps,
}

/// A request that did not reach the server's application, so sending it again cannot create a
/// duplicate. The error's source says what happened.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub(crate) struct NotSent {
    pub(crate) reason: NotSentReason,
    #[source]
    source: BoxError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotSentReason {
    #[error("no connection could be made")]
    Connect,
    /// HTTP/2 REFUSED_STREAM: the server guarantees it did not process the stream.
    #[error("the server refused the request before processing it (HTTP/2 REFUSED_STREAM)")]
    Refused,
    /// The stream was above the last-stream-id of the server's GOAWAY, or the connection had
    /// received GOAWAY before the request was handed over.
    #[error("the connection was being retired (HTTP/2 GOAWAY) before the server took the request")]
    GoingAway,
    /// The connection closed before the request was handed to it.
    #[error("the connection closed before the request was sent")]
    Closed,
}

impl NotSent {
    /// As tonic passes it on: UNAVAILABLE, with this error as its source.
    fn status(reason: NotSentReason, source: impl Into<BoxError>) -> BoxError {
        let mut status = Status::unavailable(reason.to_string());
        status.set_source(Arc::new(Self {
            reason,
            source: source.into(),
        }));
        Box::new(status)
    }
}

/// Set by the transport once a request is handed to HTTP/2 and may be written: an attempt that
/// times out before that sent nothing. Travels in the request's extensions.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestWritten(Arc<AtomicBool>);

impl RequestWritten {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for Http2Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Channel")
            .field("scheme", &self.shared.scheme)
            .field("authority", &self.shared.authority)
            .field("tls", &self.shared.tls.is_some())
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Http2Channel {
    /// A channel to `endpoint` (`scheme://host[:port]`) that connects on first use.
    pub(crate) fn lazy(
        endpoint: &str,
        security: Security<'_>,
        options: ConnectionOptions,
        user_agent: &'static str,
    ) -> Result<Self, SetupError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|error: http::uri::InvalidUri| SetupError::Uri(error.to_string()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(SetupError::Uri("it needs a scheme and a host".to_owned()));
        };
        if matches!(security, Security::Tls { .. }) && scheme != Scheme::HTTPS {
            return Err(SetupError::NotHttps);
        }
        // IPv6 literals come bracketed in URIs and unbracketed to TLS.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match security {
            Security::Tls { extra_ca } => Some(Tls {
                connector: tokio_rustls::TlsConnector::from(Arc::new(tls_config(extra_ca)?)),
                server_name: ServerName::try_from(host.clone())
                    .map_err(|error| SetupError::Tls(format!("server name {host:?}: {error}")))?,
            }),
            Security::Plaintext => None,
        };
        // The connector takes https URIs too; TLS is added here, so that ALPN can be checked.
        let connect_uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|error| SetupError::Uri(error.to_string()))?;
        let resolver = match &options.resolved_addresses {
            Some(addresses) => Resolver::Fixed(addresses.clone().into()),
            None => Resolver::System(GaiResolver::new()),
        };
        let mut connector = HttpConnector::new_with_resolver(resolver);
        connector.enforce_http(false);
        // Each call is one small write; waiting to coalesce it only adds latency.
        connector.set_nodelay(true);
        connector.set_keepalive(options.tcp_keepalive);
        connector.set_keepalive_interval(options.tcp_keepalive);
        // Every address is tried: the other family after 300 ms (Happy Eyeballs), and
        // addresses of one family in turn, each with its share of the connect timeout.
        connector.set_connect_timeout(Some(options.connect_timeout));
        let changed = Arc::new(Notify::new());
        Ok(Self {
            shared: Arc::new(Shared {
                scheme,
                authority,
                connect_uri,
                connector,
                tls,
                options,
                user_agent: HeaderValue::from_static(user_agent),
                pool: Mutex::new(Pool::default()),
                changed,
            }),
        })
    }
}

/// The bundled webpki roots plus the platform's: an image without CA certificates still
/// verifies Google's endpoints, and a private CA installed on the machine is still trusted.
pub(crate) fn root_certificates() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable system certificates are skipped, as tonic and reqwest do: the webpki roots
    // still verify Google's endpoints.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

fn tls_config(extra_ca: Option<&[u8]>) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = root_certificates();
    if let Some(pem) = extra_ca {
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate
                .map_err(|error| SetupError::Tls(format!("CA certificate PEM: {error}")))?;
            roots
                .add(certificate)
                .map_err(|error| SetupError::Tls(format!("CA certificate: {error}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(SetupError::Tls(
                "the CA certificate PEM holds no CERTIFICATE block".to_owned(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| SetupError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The system resolver, or the addresses the client was given instead.
#[derive(Clone)]
enum Resolver {
    System(GaiResolver),
    Fixed(Arc<[IpAddr]>),
}

impl Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        match self {
            Self::System(resolver) => {
                let resolving = resolver.call(name);
                Box::pin(async move { Ok(resolving.await?.collect::<Vec<_>>().into_iter()) })
            }
            // Port 0: the connector puts the endpoint's port in.
            Self::Fixed(addresses) => {
                let addresses: Vec<_> = addresses.iter().map(|ip| (*ip, 0).into()).collect();
                Box::pin(std::future::ready(Ok(addresses.into_iter())))
            }
        }
    }
}

impl Service<http::Request<Body>> for Http2Channel {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    /// Always ready: a call waits for room on a connection in its own future, under its own
    /// deadline.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(Arc::clone(&self.shared).send(request))
    }
}

impl Shared {
    async fn send(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let (mut parts, body) = request.into_parts();
        // A unary message, already encoded: one chunk, so this does not wait.
        let body = body.collect().await?.to_bytes();
        let written = parts.extensions.remove::<RequestWritten>();
        let mut uri = http::uri::Parts::from(std::mem::take(&mut parts.uri));
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        parts.uri = Uri::from_parts(uri)?;
        parts
            .headers
            .insert(http::header::USER_AGENT, self.user_agent.clone());

        let (mut sender, slot) = self.acquire().await?;
        let end_of_stream = body.is_empty();
        let (response, mut stream) = sender
            .send_request(http::Request::from_parts(parts, ()), end_of_stream)
            .map_err(refused)?;
        if let Some(written) = written {
            written.set();
        }
        if !end_of_stream {
            // Queued behind the HEADERS before the connection task runs, so both go out in one
            // write; h2 waits for flow-control capacity itself if the body is larger.
            if let Err(error) = stream.send_data(body, true) {
                // The stream ended in between (refused, above a GOAWAY's last-stream-id, its
                // connection closed): its answer says which.
                return Err(match response.await {
                    Err(reason) => response_failed(reason),
                    Ok(_) => Box::new(call_failed(error)),
                });
            }
        }
        let abandoned = CheckIfAbandoned {
            slot: Some(slot),
            sent: Instant::now(),
            ping_timeout: self.options.keepalive_timeout,
        };
        let response = response.await.map_err(response_failed)?;
        Ok(response.map(|body| ResponseBody {
            body,
            data_done: false,
            _slot: abandoned.answered(),
        }))
    }

    /// A connection with room for one more stream, and the slot that holds that room until
    /// the call ends. Waits for room, or for a connection made in the background.
    async fn acquire(self: &Arc<Self>) -> Result<(SendRequest<Bytes>, Slot), BoxError> {
        // The attempts finished when this call started waiting on one.
        let mut waited_for: Option<u64> = None;
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the pool is read, so a change made after the read wakes it.
            notified.as_mut().enable();
            {
                let mut pool = self.lock_pool();
                pool.connections
                    .retain_mut(PooledConnection::takes_new_streams);
                if let Some(connection) = pool.least_loaded_with_room() {
                    connection.state.in_flight.fetch_add(1, Ordering::AcqRel);
                    let slot = Slot {
                        state: Arc::clone(&connection.state),
                    };
                    return Ok((connection.sender.clone(), slot));
                }
                // A call that waited for a connection attempt that failed gets that failure when
                // there is no connection to wait on instead; the retry policy's backoff paces
                // the next attempt.
                if let (Some(waited_for), Some((failure, _))) = (waited_for, &pool.last_failure)
                    && pool.attempts_finished > waited_for
                    && pool.connections.is_empty()
                {
                    return Err(NotSent::status(
                        NotSentReason::Connect,
                        std::io::Error::other(failure.to_string()),
                    ));
                }
                if pool.should_connect(self.options.max_connections) {
                    pool.connecting = true;
                    tokio::spawn(connect_in_background(Arc::clone(self)));
                }
                if pool.connecting {
                    waited_for.get_or_insert(pool.attempts_finished);
                }
            }
            notified.await;
        }
    }

    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        // Every update leaves the pool consistent, so a panic elsewhere cannot leave it
        // half-made.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn connect(&self) -> Result<Established, BoxError> {
        let tcp = self
            .connector
            .clone()
            .call(self.connect_uri.clone())
            .await?
            .into_inner();
        let Some(tls) = &self.tls else {
            return handshake(Box::new(tcp)).await;
        };
        let stream = tls.connector.connect(tls.server_name.clone(), tcp).await?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(b"h2") {
            let agreed = alpn.map_or_else(
                || "none".to_owned(),
                |protocol| String::from_utf8_lossy(&protocol).into_owned(),
            );
            return Err(format!(
                "{} did not agree to HTTP/2 in the TLS handshake (ALPN: {agreed}); gRPC needs \
                 HTTP/2 end to end, so a proxy or load balancer on the way that speaks only \
                 HTTP/1.1 must be bypassed or set to HTTP/2",
                self.authority
            )
            .into());
        }
        handshake(Box::new(stream)).await
    }
}

impl Pool {
    fn least_loaded_with_room(&self) -> Option<&PooledConnection> {
        self.connections
            .iter()
            .filter(|connection| connection.room() > 0)
            .min_by_key(|connection| connection.state.in_flight.load(Ordering::Acquire))
    }

    /// Whether a new connection should be made for a call that found no room.
    fn should_connect(&self, max_connections: usize) -> bool {
        if self.connecting || self.connections.len() >= max_connections {
            return false;
        }
        // With connections up, a failing endpoint is not hammered: their calls make room.
        match &self.last_failure {
            Some((_, failed_at)) if !self.connections.is_empty() => {
                failed_at.elapsed() >= RECONNECT_DELAY
            }
            _ => true,
        }
    }
}

impl PooledConnection {
    fn takes_new_streams(&mut self) -> bool {
        // A clone of a sender has no stream pending, so this only checks the connection.
        let open = matches!(
            self.sender
                .poll_ready(&mut Context::from_waker(std::task::Waker::noop())),
            Poll::Ready(Ok(()))
        );
        if !open {
            tracing::debug!("HTTP/2 connection to Cloud Tasks retired (GOAWAY or closed)");
        }
        open
    }

    fn room(&self) -> usize {
        self.sender
            .current_max_send_streams()
            .saturating_sub(self.state.in_flight.load(Ordering::Acquire))
    }
}

/// Makes one connection and adds it to the pool; on failure records why, for the calls that
/// waited. Runs on its own task so that no caller's deadline cancels it.
async fn connect_in_background(shared: Arc<Shared>) {
    // If the runtime shuts down mid-attempt, the guard still ends the attempt.
    let attempt = AttemptGuard {
        shared: Arc::downgrade(&shared),
        done: false,
    };
    let timeout = shared.options.connect_timeout;
    let result = match tokio::time::timeout(timeout, shared.connect()).await {
        Ok(result) => result,
        Err(_) => Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting took longer than {timeout:?}"),
        )) as BoxError),
    };
    match result {
        Ok(Established {
            sender,
            connection,
            pings,
        }) => {
            let state = Arc::new(ConnectionState {
                in_flight: AtomicUsize::new(0),
                last_used_ms: AtomicU64::new(0),
                opened: Instant::now(),
                check: Notify::new(),
                pool_changed: Arc::clone(&shared.changed),
            });
            tokio::spawn(drive(
                connection,
                pings,
                Arc::clone(&state),
                Arc::downgrade(&shared),
                shared.options.clone(),
            ));
            attempt.finish(Ok(PooledConnection { sender, state }));
        }
        Err(error) => {
            tracing::debug!(%error, "connecting to Cloud Tasks failed");
            attempt.finish(Err(error));
        }
    }
}

struct AttemptGuard {
    shared: Weak<Shared>,
    done: bool,
}

impl AttemptGuard {
    fn finish(mut self, result: Result<PooledConnection, BoxError>) {
        self.done = true;
        self.record(result);
    }

    fn record(&self, result: Result<PooledConnection, BoxError>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        {
            let mut pool = shared.lock_pool();
            pool.connecting = false;
            pool.attempts_finished += 1;
            match result {
                Ok(connection) => {
                    pool.connections.push(connection);
                    pool.last_failure = None;
                }
                Err(error) => {
                    pool.last_failure = Some((error.to_string().into(), Instant::now()));
                }
            }
        }
        shared.changed.notify_waiters();
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.done {
            self.record(Err("the runtime shut down while connecting".into()));
        }
    }
}

/// The byte stream under h2: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Connection = h2::client::Connection<Box<dyn Io>, Bytes>;

/// A connection whose HTTP/2 handshake is done: the handle calls are sent on, the connection
/// to drive, and its PING handle.
struct Established {
    sender: SendRequest<Bytes>,
    connection: Connection,
    pings: PingPong,
}

/// Starts HTTP/2 on `io` and waits for the server's SETTINGS, as gRPC's clients wait for the
/// server's preface: the answer to a PING comes after them, so calls see the server's stream
/// limit from the first one (a burst above it is refused, by C-core even with
/// ENHANCE_YOUR_CALM, which does not say the call was not processed).
async fn handshake(io: Box<dyn Io>) -> Result<Established, BoxError> {
    let (sender, mut connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_max_send_streams(INITIAL_STREAM_LIMIT)
        .handshake(io)
        .await?;
    let Some(mut pings) = connection.ping_pong() else {
        unreachable!("a new connection's PING handle is taken once, here")
    };
    tokio::select! {
        closed = &mut connection => return Err(match closed {
            Err(error) => error.into(),
            Ok(()) => "the server closed the connection during the HTTP/2 handshake".into(),
        }),
        pong = pings.ping(Ping::opaque()) => pong?,
    };
    Ok(Established {
        sender,
        connection,
        pings,
    })
}

/// Drives one connection until it closes, checking it with PINGs: when idle for the keepalive
/// interval, and when a call asks (it was abandoned after waiting long). No answer within the
/// keepalive timeout closes it, which fails its calls at once. An extra connection of the pool
/// that is idle for the keepalive interval is closed instead of checked.
async fn drive(
    connection: Connection,
    mut pings: PingPong,
    state: Arc<ConnectionState>,
    pool: Weak<Shared>,
    options: ConnectionOptions,
) {
    let mut connection = std::pin::pin!(connection);
    loop {
        tokio::select! {
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP/2 connection to Cloud Tasks closed");
                }
                break;
            }
            decision = check_when_due(&state, &mut pings, &pool, &options) => match decision {
                Health::Alive => {}
                Health::Dead => {
                    tracing::warn!(
                        timeout = ?options.keepalive_timeout,
                        "the connection to Cloud Tasks did not answer a PING; closing it, the \
                         next call connects again"
                    );
                    remove_from_pool(&pool, &state);
                    break;
                }
                Health::Retired => break,
            },
        }
    }
    // Dropping the connection fails the calls still on it; waiting calls look again.
    state.pool_changed.notify_waiters();
}

enum Health {
    Alive,
    Dead,
    /// An idle extra connection, taken out of the pool.
    Retired,
}

async fn check_when_due(
    state: &Arc<ConnectionState>,
    pings: &mut PingPong,
    pool: &Weak<Shared>,
    options: &ConnectionOptions,
) -> Health {
    let idle_check = async {
        let Some(interval) = options.keepalive_interval else {
            return std::future::pending().await;
        };
        // Calls that end push the check back; one that hangs does not.
        while state.last_used() + interval > Instant::now() {
            tokio::time::sleep_until(state.last_used() + interval).await;
        }
    };
    tokio::select! {
        () = idle_check => {
            if retire_if_extra(pool, state) {
                return Health::Retired;
            }
        }
        () = state.check.notified() => {}
    }
    match tokio::time::timeout(options.keepalive_timeout, pings.ping(Ping::opaque())).await {
        Ok(Ok(_)) => {
            state.touch();
            Health::Alive
        }
        _ => Health::Dead,
    }
}

/// Takes an idle connection out of the pool if the pool has another one.
fn retire_if_extra(pool: &Weak<Shared>, state: &Arc<ConnectionState>) -> bool {
    let Some(shared) = pool.upgrade() else {
        return false;
    };
    let mut pool = shared.lock_pool();
    if pool.connections.len() < 2 || state.in_flight.load(Ordering::Acquire) > 0 {
        return false;
    }
    pool.connections
        .retain(|connection| !Arc::ptr_eq(&connection.state, state));
    tracing::debug!("idle extra HTTP/2 connection to Cloud Tasks closed");
    true
}

fn remove_from_pool(pool: &Weak<Shared>, state: &Arc<ConnectionState>) {
    if let Some(shared) = pool.upgrade() {
        shared
            .lock_pool()
            .connections
            .retain(|connection| !Arc::ptr_eq(&connection.state, state));
    }
}

impl ConnectionState {
    fn last_used(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(elapsed, Ordering::Relaxed);
    }
}

/// Room for one stream on a connection, held from before the request is sent until its answer
/// is read or abandoned.
struct Slot {
    state: Arc<ConnectionState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.touch();
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.state.pool_changed.notify_one();
    }
}

/// Held while a call waits for its answer: dropped before [`CheckIfAbandoned::answered`], the
/// call was abandoned (its deadline passed, or its caller gave up), and the connection is
/// checked with a PING, if the call waited at least as long as the PING may take: a call given
/// up sooner says nothing about the connection, and a caller that often gives up quickly must
/// not flood Cloud Tasks with PINGs (servers answer too many with GOAWAY).
struct CheckIfAbandoned {
    slot: Option<Slot>,
    sent: Instant,
    ping_timeout: Duration,
}

impl CheckIfAbandoned {
    fn answered(mut self) -> Option<Slot> {
        self.slot.take()
    }
}

impl Drop for CheckIfAbandoned {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot
            && self.sent.elapsed() >= self.ping_timeout
        {
            // A check already asked for answers for this call too.
            slot.state.check.notify_one();
        }
    }
}

/// h2 refused to open the stream, so nothing of the request was queued. If the connection had
/// closed or received GOAWAY since the pool looked, nothing was sent; anything else is a
/// request h2 cannot send at all.
fn refused(error: h2::Error) -> BoxError {
    if error.is_go_away() && error.is_remote() {
        NotSent::status(NotSentReason::GoingAway, error)
    } else if error.is_io() || error.is_go_away() {
        NotSent::status(NotSentReason::Closed, error)
    } else {
        Box::new(Status::internal(format!(
            "HTTP/2 refused to send the request: {error}"
        )))
    }
}

/// A failure before the answer's headers. h2 applies the peer's GOAWAY error only to streams
/// above its last-stream-id, and REFUSED_STREAM means the server did not process the stream:
/// both are not sent. Anything else may have reached the server.
fn response_failed(error: h2::Error) -> BoxError {
    if error.is_go_away() && error.is_remote() {
        NotSent::status(NotSentReason::GoingAway, error)
    } else if error.is_reset()
        && error.is_remote()
        && error.reason() == Some(h2::Reason::REFUSED_STREAM)
    {
        NotSent::status(NotSentReason::Refused, error)
    } else {
        Box::new(call_failed(error))
    }
}

/// An HTTP/2 failure once the request may have been sent, as gRPC's HTTP/2 mapping says
/// (PROTOCOL-HTTP2.md); a lost connection is UNAVAILABLE.
fn call_failed(error: h2::Error) -> Status {
    let code = match error.reason() {
        _ if error.is_io() || error.is_go_away() => Code::Unavailable,
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
        None => Code::Unknown,
    };
    let mut status = Status::new(code, format!("HTTP/2 error: {error}"));
    status.set_source(Arc::new(error));
    status
}

/// A response body read straight from the h2 stream: its data, then its trailers (where gRPC
/// puts the status). It holds the call's room on the connection until it is read or dropped.
pub(crate) struct ResponseBody {
    body: h2::RecvStream,
    data_done: bool,
    _slot: Option<Slot>,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if !self.data_done {
            match ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Lets the server send more; fails only if the stream is already gone,
                    // which the next poll reports.
                    self.body
                        .flow_control()
                        .release_capacity(data.len())
                        .unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(call_failed(error)))),
                None => self.data_done = true,
            }
        }
        match ready!(self.body.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(call_failed(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_roots_are_trusted_whatever_the_platform_has() {
        // What the gRPC transport and the receiver's key fetches trust: in an image without CA
        // certificates the platform contributes nothing, and these still verify Google.
        let roots = root_certificates();
        assert!(
            roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len(),
            "{} roots",
            roots.len()
        );
    }

    fn options() -> ConnectionOptions {
        ConnectionOptions {
            connect_timeout: Duration::from_secs(1),
            max_connections: 4,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(1),
            tcp_keepalive: None,
            resolved_addresses: None,
        }
    }

    #[test]
    fn the_connect_uri_keeps_the_endpoint_authority() {
        let cases = [
            (
                "https://cloudtasks.googleapis.com",
                "https://cloudtasks.googleapis.com/",
            ),
            ("http://localhost", "http://localhost/"),
            ("http://127.0.0.1:8123", "http://127.0.0.1:8123/"),
            ("http://[::1]:8123", "http://[::1]:8123/"),
        ];
        for (endpoint, expected) in cases {
            let channel =
                Http2Channel::lazy(endpoint, Security::Plaintext, options(), "test").unwrap();
            assert_eq!(
                channel.shared.connect_uri.to_string(),
                expected,
                "{endpoint}"
            );
        }
    }

    #[test]
    fn an_endpoint_without_scheme_or_host_is_refused() {
        for endpoint in ["cloudtasks.googleapis.com", "/path", "https://"] {
            let error = Http2Channel::lazy(endpoint, Security::Plaintext, options(), "test")
                .map(|_| ())
                .unwrap_err();
            assert!(
                error.to_string().contains("not a valid endpoint URI"),
                "{endpoint}: {error}"
            );
        }
    }
}
