//! One connection: dialing it (TCP through hyper-util's connector, then TLS with ALPN `h2`),
//! the HTTP/2 handshake, and the task that drives it and checks it with PINGs. It never
//! decides where a call goes: the pool (`pool.rs`) does, from the [`ConnectionState`] this
//! file keeps up to date.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong};
use http::Uri;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::codegen::Service;

use super::BoxError;
use super::pool::Pool;

/// Flow-control windows this side advertises: as hyper's defaults, large enough that a batch
/// of 100 tasks or its answer never waits for a window update.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Streams a connection carries at most: Google's front ends admit 100, and h2 assumes no limit
/// when the peer announces none.
const STREAM_LIMIT: usize = 100;

/// Streams opened before the server's SETTINGS arrive: the first call goes out with the
/// connection preface, as tonic's channel sends it, instead of waiting for the server's first
/// frame; the others wait, so that a burst never exceeds a limit not yet known (C-core refuses
/// such a burst, some streams with ENHANCE_YOUR_CALM, which does not say they were not
/// processed).
const STREAMS_BEFORE_SETTINGS: usize = 1;

/// gRPC servers' default minimum between two PINGs while calls are open, unless the server
/// sent HEADERS or DATA in between (C-core's `grpc.http2.min_ping_interval_without_data_ms`,
/// Go's `MinTime`).
const SERVER_PING_INTERVAL_WITH_CALLS: Duration = Duration::from_secs(5 * 60);

/// An idle connection is closed after this long if the pool has another healthy one, as
/// hyper's pool closes idle connections after 90 s.
const IDLE_EXTRA: Duration = Duration::from_secs(90);

/// How the connections are made and kept; set on `ClientBuilder`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) max_connections: usize,
    /// A connection without calls gets a PING after this long without a frame; `None` sends
    /// none.
    pub(crate) keepalive_interval: Option<Duration>,
    /// How long a connection with calls outstanding may receive nothing before it is closed
    /// (a PING goes out after half of it), and how long an idle PING may go unanswered. Also
    /// TCP_USER_TIMEOUT, where the system has it.
    pub(crate) keepalive_timeout: Duration,
    pub(crate) tcp_keepalive: Option<Duration>,
    /// Addresses to connect to instead of resolving the endpoint's host.
    pub(crate) resolved_addresses: Option<Vec<IpAddr>>,
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

/// Everything needed to open a connection to the endpoint; made once per channel.
pub(super) struct Dialer {
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    /// What the TCP connector is asked for: the endpoint, without its port when fixed
    /// addresses carry none (the connector then uses the scheme's).
    connect_uri: Uri,
    connector: HttpConnector<Resolver>,
    tls: Option<Tls>,
    pub(super) options: ConnectionOptions,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer for `endpoint` (`scheme://host[:port]`); no I/O.
    pub(super) fn new(
        endpoint: &str,
        security: Security<'_>,
        options: ConnectionOptions,
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
        // Data the peer does not acknowledge for this long closes the connection: TCP keepalive
        // does not probe while data is unacknowledged, and an HTTP/2 PING is itself such data.
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        connector.set_tcp_user_timeout(Some(options.keepalive_timeout));
        // Every address is tried: the other family after 300 ms (Happy Eyeballs), and
        // addresses of one family in turn, each with its share of the connect timeout.
        connector.set_connect_timeout(Some(options.connect_timeout));
        Ok(Self {
            scheme,
            authority,
            connect_uri,
            connector,
            tls,
            options,
        })
    }

    /// Dials the endpoint and starts HTTP/2 on it; waiting calls are woken through
    /// `pool_changed` once it runs.
    pub(super) async fn connect(&self, pool_changed: Arc<Notify>) -> Result<Established, BoxError> {
        let state = Arc::new(ConnectionState::new(pool_changed));
        let tcp = self
            .connector
            .clone()
            .call(self.connect_uri.clone())
            .await?
            .into_inner();
        let Some(tls) = &self.tls else {
            return handshake(Box::new(tcp), state).await;
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
        handshake(Box::new(stream), state).await
    }
}

/// The bundled webpki roots plus the platform's: an image without CA certificates still
/// verifies Google's endpoints, and a private CA installed on the machine is still trusted.
/// The receiver's key fetches use them too.
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

/// What calls, the pool and the connection's task share about one connection. The task keeps
/// `stream_limit` and `open` up to date from what h2 read; calls keep `in_flight` and the
/// times of their start and end; the byte stream under h2 keeps `last_received`.
pub(super) struct ConnectionState {
    opened: Instant,
    /// Calls holding a slot on this connection.
    pub(super) in_flight: AtomicUsize,
    /// Streams the peer admits, at most [`STREAM_LIMIT`].
    stream_limit: AtomicUsize,
    /// The server's first frame (its SETTINGS) arrived: its stream limit is known.
    settled: AtomicBool,
    /// Takes new streams: no GOAWAY received, not closed.
    open: AtomicBool,
    /// A PING is out and unanswered: the connection may be dead, so it takes no new call.
    probing: AtomicBool,
    /// When the last byte arrived from the peer.
    last_received: Stamp,
    /// When the last answer's headers arrived: the server sent HEADERS since, which resets the
    /// PING strikes gRPC servers count.
    last_answered: Stamp,
    /// When the connection last went from no call to one.
    busy_since: Stamp,
    /// When the connection last went from calls to none.
    idle_since: Stamp,
    pub(super) pool_changed: Arc<Notify>,
}

/// An instant after the connection opened, in an atomic: milliseconds since then, plus one
/// (0: never).
struct Stamp(AtomicU64);

impl ConnectionState {
    pub(super) fn new(pool_changed: Arc<Notify>) -> Self {
        let never = || Stamp(AtomicU64::new(0));
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            stream_limit: AtomicUsize::new(STREAMS_BEFORE_SETTINGS),
            settled: AtomicBool::new(false),
            open: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            last_received: never(),
            last_answered: never(),
            busy_since: never(),
            idle_since: never(),
            pool_changed,
        }
    }

    /// Streams a new call may still open here: none once closed, after GOAWAY, or while a PING
    /// is unanswered.
    pub(super) fn room(&self) -> usize {
        if !self.takes_new_streams() || self.probing.load(Ordering::Acquire) {
            return 0;
        }
        self.stream_limit
            .load(Ordering::Acquire)
            .saturating_sub(self.in_flight.load(Ordering::Acquire))
    }

    /// Whether the server's SETTINGS arrived; until then the connection has room for one call,
    /// and the pool waits for them rather than open another connection.
    pub(super) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    pub(super) fn takes_new_streams(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Neither closing nor in doubt: a connection the pool can count on.
    pub(super) fn is_healthy(&self) -> bool {
        self.takes_new_streams() && !self.probing.load(Ordering::Acquire)
    }

    /// Whether an answer ever arrived here: a connection retired before one was refused at
    /// once, as a failed attempt is.
    pub(super) fn ever_answered(&self) -> bool {
        self.last_answered.get(self.opened).is_some()
    }

    /// A call takes room here (the pool holds its lock).
    pub(super) fn call_started(&self) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.busy_since.set(self.opened);
        }
    }

    pub(super) fn call_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.set(self.opened);
        }
    }

    pub(super) fn answered(&self) {
        self.last_answered.set(self.opened);
    }

    fn received(&self) {
        self.last_received.set(self.opened);
    }

    fn last_received(&self) -> Instant {
        self.last_received.get(self.opened).unwrap_or(self.opened)
    }

    /// Takes no new stream from now on; whether it took them until now.
    pub(super) fn retire(&self) -> bool {
        self.open.swap(false, Ordering::AcqRel)
    }
}

impl Stamp {
    fn set(&self, opened: Instant) {
        let elapsed = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.0.store(elapsed + 1, Ordering::Release);
    }

    fn get(&self, opened: Instant) -> Option<Instant> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            stamp => Some(opened + Duration::from_millis(stamp - 1)),
        }
    }
}

/// The byte stream under h2: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The byte stream h2 reads, noting when bytes arrive: any frame proves the peer alive.
struct Watched {
    io: Box<dyn Io>,
    state: Arc<ConnectionState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.received();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Connection = h2::client::Connection<Watched, Bytes>;

/// A connection whose HTTP/2 handshake has started: the handle calls are sent on, the
/// connection to drive, its PING handle and its state.
pub(super) struct Established {
    sender: SendRequest<Bytes>,
    connection: Connection,
    pings: PingPong,
    state: Arc<ConnectionState>,
}

impl Established {
    /// Spawns the connection's task; the handle calls are sent on, and the state the pool
    /// reads.
    pub(super) fn drive(self, pool: &Arc<Pool>) -> (SendRequest<Bytes>, Arc<ConnectionState>) {
        let driven = Driven {
            connection: self.connection,
            sender: self.sender.clone(),
            state: Arc::clone(&self.state),
            limit_seen: STREAMS_BEFORE_SETTINGS,
            pool: Arc::downgrade(pool),
        };
        let keepalive = Keepalive::new(Arc::clone(&self.state), &pool.dialer.options);
        tokio::spawn(drive(driven, self.pings, keepalive, Arc::downgrade(pool)));
        (self.sender, self.state)
    }
}

/// Starts HTTP/2 on `io`. Nothing is awaited from the server: the first call goes out with the
/// connection preface, as HTTP/2 allows and as tonic's channel does, and the others wait for
/// the server's SETTINGS (see [`STREAMS_BEFORE_SETTINGS`]).
async fn handshake(io: Box<dyn Io>, state: Arc<ConnectionState>) -> Result<Established, BoxError> {
    let io = Watched {
        io,
        state: Arc::clone(&state),
    };
    let (sender, mut connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_max_send_streams(STREAMS_BEFORE_SETTINGS)
        .handshake(io)
        .await?;
    let Some(pings) = connection.ping_pong() else {
        unreachable!("a new connection's PING handle is taken once, here")
    };
    Ok(Established {
        sender,
        connection,
        pings,
        state,
    })
}

/// The connection, polled so that what h2 read (the peer's SETTINGS, a GOAWAY, the end) is
/// passed on to the pool right after it was read.
struct Driven {
    connection: Connection,
    /// A clone never used to send: it only tells whether the connection takes new streams.
    sender: SendRequest<Bytes>,
    state: Arc<ConnectionState>,
    limit_seen: usize,
    pool: Weak<Pool>,
}

impl Future for Driven {
    type Output = Result<(), h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = Pin::new(&mut self.connection).poll(cx);
        self.observe();
        result
    }
}

impl Driven {
    fn observe(&mut self) {
        let limit = self.sender.current_max_send_streams().min(STREAM_LIMIT);
        let mut room_appeared = false;
        if limit != self.limit_seen {
            self.state.stream_limit.store(limit, Ordering::Release);
            room_appeared = limit > self.limit_seen;
            self.limit_seen = limit;
        }
        // The server's first frame is its SETTINGS, and h2 applies them in the poll that read
        // them.
        if !self.state.is_settled() && self.state.last_received.get(self.state.opened).is_some() {
            self.state.settled.store(true, Ordering::Release);
            room_appeared = true;
        }
        if room_appeared {
            self.state.pool_changed.notify_waiters();
        }
        // A clone with no stream pending: this only checks the connection (GOAWAY, closed,
        // stream IDs used up).
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        if self.state.takes_new_streams()
            && !matches!(self.sender.poll_ready(noop), Poll::Ready(Ok(())))
        {
            tracing::debug!("HTTP/2 connection to Cloud Tasks retired (GOAWAY or closed)");
            self.retire();
        }
    }

    fn retire(&self) {
        if self.state.retire()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.retired(&self.state);
        }
    }
}

impl Drop for Driven {
    /// However the task ends (closed, dead, retired, or its runtime shut down), the pool stops
    /// counting on the connection, and waiting calls look again.
    fn drop(&mut self) {
        self.retire();
    }
}

/// Drives one connection until it closes, is found dead, or is retired as an idle extra.
async fn drive(driven: Driven, mut pings: PingPong, mut keepalive: Keepalive, pool: Weak<Pool>) {
    let state = Arc::clone(&driven.state);
    let mut connection = std::pin::pin!(driven);
    loop {
        tokio::select! {
            // The connection first: its poll reads what arrived (the server's SETTINGS, any
            // frame) into `state`, and the keepalive's next deadline must be worked out from
            // that. In a random order the keepalive could arm its timer from the state before
            // the read, and with nothing else arriving the task would not wake again: a
            // connection settled with a call waiting would never send its liveness PING.
            biased;
            result = &mut connection => {
                if let Err(error) = result {
                    tracing::debug!(%error, "HTTP/2 connection to Cloud Tasks closed");
                }
                break;
            }
            pong = std::future::poll_fn(|cx| pings.poll_pong(cx)), if keepalive.probe.is_some() => {
                // An error is the connection's, which its own branch reports.
                if pong.is_ok() {
                    keepalive.answered();
                }
            }
            due = std::future::poll_fn(|cx| keepalive.poll_due(cx)) => match due {
                Due::Ping(deadline) => {
                    if pings.send_ping(Ping::opaque()).is_ok() {
                        keepalive.sent(deadline);
                    }
                }
                Due::Dead if !state.is_settled() => {
                    tracing::warn!(
                        timeout = ?keepalive.settings_timeout,
                        "the server sent no HTTP/2 SETTINGS within the connect timeout; closing \
                         the connection"
                    );
                    break;
                }
                Due::Dead => {
                    tracing::warn!(
                        timeout = ?keepalive.timeout,
                        "the connection to Cloud Tasks did not answer a PING; closing it, the \
                         next call connects again"
                    );
                    break;
                }
                Due::Idle => {
                    if pool.upgrade().is_some_and(|pool| pool.retire_if_extra(&state)) {
                        break;
                    }
                    keepalive.kept_idle();
                }
            },
        }
    }
    // Dropping the connection fails the calls still on it; dropping `Driven` takes it out of
    // the pool, which wakes the waiting calls.
}

/// When to PING, and when a connection is dead or idle for too long.
///
/// gRPC servers (C-core, Go) count a PING as a strike when it comes less than 5 minutes after
/// the previous one without the server having sent HEADERS or DATA since, or, with no call
/// open, less than 2 hours after it; past 2 strikes they close the connection with GOAWAY
/// `too_many_pings`. So:
/// - with calls outstanding and nothing received for half the keepalive timeout, one PING,
///   and the next only after an answer's headers arrived or 5 minutes passed: at most one
///   strike, reset by the server's next answer;
/// - with no call, a PING only after the keepalive interval (2 hours by default), and an
///   extra connection idle for [`IDLE_EXTRA`] is closed instead.
struct Keepalive {
    state: Arc<ConnectionState>,
    timeout: Duration,
    interval: Option<Duration>,
    /// How long the server's SETTINGS may take: the connect timeout.
    settings_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The PING out: when it must be answered by.
    probe: Option<Instant>,
    last_ping: Option<Instant>,
    /// An idle check found the pool needs this connection; the next one is due this much later.
    next_idle_check: Option<Instant>,
}

enum Due {
    /// Send a PING, to be answered by this instant.
    Ping(Instant),
    Dead,
    Idle,
}

impl Keepalive {
    fn new(state: Arc<ConnectionState>, options: &ConnectionOptions) -> Self {
        Self {
            state,
            timeout: options.keepalive_timeout,
            interval: options.keepalive_interval,
            settings_timeout: options.connect_timeout,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            probe: None,
            last_ping: None,
            next_idle_check: None,
        }
    }

    /// The next thing due, and when. Read at every wake-up of the task, so that a call on an
    /// idle connection brings the liveness check forward.
    fn next(&self) -> (Instant, Due) {
        let state = &self.state;
        if let Some(deadline) = self.probe {
            return (deadline, Due::Dead);
        }
        if !state.is_settled() {
            return (state.opened + self.settings_timeout, Due::Dead);
        }
        if state.in_flight.load(Ordering::Acquire) > 0 {
            let silent_since = state
                .last_received()
                .max(state.busy_since.get(state.opened).unwrap_or(state.opened));
            let mut at = silent_since + self.timeout / 2;
            if let Some(last_ping) = self.last_ping
                && state.last_answered.get(state.opened) <= Some(last_ping)
            {
                at = at.max(last_ping + SERVER_PING_INTERVAL_WITH_CALLS);
            }
            return (at, Due::Ping(silent_since + self.timeout));
        }
        let idle_since = state.idle_since.get(state.opened).unwrap_or(state.opened);
        let idle_check = (idle_since + IDLE_EXTRA).max(self.next_idle_check.unwrap_or(idle_since));
        let ping = self.interval.map(|interval| {
            let quiet_since = state
                .last_received()
                .max(self.last_ping.unwrap_or(state.opened));
            quiet_since + interval
        });
        match ping {
            Some(at) if at < idle_check => (at, Due::Ping(at + self.timeout)),
            _ => (idle_check, Due::Idle),
        }
    }

    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        loop {
            let (at, due) = self.next();
            if at <= Instant::now() {
                return Poll::Ready(match due {
                    // The deadline of a liveness PING counts from the silence's start: at least
                    // half the timeout from now.
                    Due::Ping(deadline) => {
                        Due::Ping(deadline.max(Instant::now() + self.timeout / 2))
                    }
                    due => due,
                });
            }
            // Moved later (a byte arrived, a call ended): the timer fires early and this looks
            // again, which is cheaper than resetting it at every frame.
            if at < self.sleep.deadline() || self.sleep.is_elapsed() {
                self.sleep.as_mut().reset(at);
            }
            std::task::ready!(self.sleep.as_mut().poll(cx));
        }
    }

    fn sent(&mut self, deadline: Instant) {
        self.probe = Some(deadline);
        self.last_ping = Some(Instant::now());
        self.state.probing.store(true, Ordering::Release);
    }

    fn answered(&mut self) {
        self.probe = None;
        self.state.probing.store(false, Ordering::Release);
        self.state.pool_changed.notify_waiters();
    }

    fn kept_idle(&mut self) {
        self.next_idle_check = Some(Instant::now() + IDLE_EXTRA);
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

    /// An image without CA certificates, simulated as rustls-native-certs reads the platform's:
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` point at nothing, so the platform contributes no root.
    /// The environment is the process's, so the check runs in a child process of this test
    /// binary.
    #[test]
    fn without_platform_certificates_the_bundled_roots_still_verify_google() {
        const CHILD: &str = "CLOUD_TASKS_TEST_NO_PLATFORM_CERTIFICATES";
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(
                root_certificates().len(),
                webpki_roots::TLS_SERVER_ROOTS.len(),
                "the bundled roots, and nothing from the platform"
            );
            return;
        }
        let nowhere =
            std::env::temp_dir().join(format!("no-ca-certificates-{}", uuid::Uuid::new_v4()));
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "transport::connection::tests::without_platform_certificates_the_bundled_roots_still_verify_google",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("SSL_CERT_FILE", &nowhere)
            .env("SSL_CERT_DIR", &nowhere)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{report}");
        assert!(
            report.contains("1 passed"),
            "the child ran the check: {report}"
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

    /// The socket a dialer opens carries TCP_USER_TIMEOUT = the keepalive timeout, so data the
    /// peer never acknowledges (a connection dropped without FIN or RST, a PING into the void)
    /// closes it in the kernel too, not only in the keepalive above it.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_socket_gives_up_on_unacknowledged_data_after_the_keepalive_timeout() {
        use std::os::fd::AsRawFd;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let options = ConnectionOptions {
            keepalive_timeout: Duration::from_millis(7250),
            ..options()
        };
        let dialer = Dialer::new(&endpoint, Security::Plaintext, options).unwrap();
        let tcp = dialer
            .connector
            .clone()
            .call(dialer.connect_uri.clone())
            .await
            .unwrap()
            .into_inner();

        let mut milliseconds: libc::c_uint = 0;
        let mut length = libc::socklen_t::try_from(std::mem::size_of::<libc::c_uint>()).unwrap();
        // SAFETY: a valid socket descriptor, and a value and length that match the option.
        let status = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                std::ptr::from_mut(&mut milliseconds).cast(),
                &raw mut length,
            )
        };
        assert_eq!(status, 0, "{}", std::io::Error::last_os_error());
        assert_eq!(milliseconds, 7250);
    }

    /// With calls outstanding, one PING after half the keepalive timeout without a frame; once
    /// answered, the next one waits for an answer's headers (which reset the server's strikes)
    /// or for 5 minutes, so a server that stays silent is not PINGed into GOAWAY.
    #[tokio::test(start_paused = true)]
    async fn with_calls_one_ping_per_silence_until_an_answer() {
        let state = Arc::new(ConnectionState::new(Arc::new(Notify::new())));
        state.settled.store(true, Ordering::Release);
        state.stream_limit.store(STREAM_LIMIT, Ordering::Release);
        let options = ConnectionOptions {
            keepalive_timeout: Duration::from_secs(20),
            ..options()
        };
        let mut keepalive = Keepalive::new(Arc::clone(&state), &options);
        state.call_started();
        let (at, due) = keepalive.next();
        assert!(matches!(due, Due::Ping(_)));
        assert_eq!(at - Instant::now(), Duration::from_secs(10));

        tokio::time::advance(Duration::from_secs(10)).await;
        keepalive.sent(Instant::now() + Duration::from_secs(10));
        assert_eq!(state.room(), 0, "no new call while the PING is out");
        keepalive.answered();
        assert!(state.room() > 0);
        let (at, _) = keepalive.next();
        assert_eq!(at - Instant::now(), SERVER_PING_INTERVAL_WITH_CALLS);

        tokio::time::advance(Duration::from_secs(1)).await;
        state.answered();
        let (at, _) = keepalive.next();
        assert!(at - Instant::now() < Duration::from_secs(10), "{at:?}");
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
            let dialer = Dialer::new(endpoint, Security::Plaintext, options()).unwrap();
            assert_eq!(dialer.connect_uri.to_string(), expected, "{endpoint}");
        }
    }

    #[test]
    fn an_endpoint_without_scheme_or_host_is_refused() {
        for endpoint in ["cloudtasks.googleapis.com", "/path", "https://"] {
            let error = Dialer::new(endpoint, Security::Plaintext, options())
                .map(|_| ())
                .unwrap_err();
            assert!(
                error.to_string().contains("not a valid endpoint URI"),
                "{endpoint}: {error}"
            );
        }
    }
}
