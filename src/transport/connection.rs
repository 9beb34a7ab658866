//! One connection: dialing it (TCP through hyper-util's connector, then TLS with ALPN `h2`),
//! the HTTP/2 handshake, and the task that drives it and checks it with PINGs. It never
//! decides where a call goes: the pool (`pool.rs`) does, from the [`ConnectionState`] this
//! file keeps up to date.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::codegen::Service;

use super::BoxError;
use super::pool::Pool;

/// Flow-control windows this side advertises: as hyper's defaults, large enough that a batch
/// of 100 tasks or its answer never waits for a window update.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// Streams allowed on a connection whose peer announces no limit: Google's front ends admit
/// 100, and h2 would otherwise assume no limit.
const INITIAL_STREAM_LIMIT: usize = 100;

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

    pub(super) async fn connect(&self) -> Result<Established, BoxError> {
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

pub(super) struct ConnectionState {
    pub(super) in_flight: AtomicUsize,
    /// When a call last ended, in milliseconds since `opened`.
    pub(super) last_used_ms: AtomicU64,
    pub(super) opened: Instant,
    /// Asks the connection's task to check the connection with a PING now.
    pub(super) check: Notify,
    pub(super) pool_changed: Arc<Notify>,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Connection = h2::client::Connection<Box<dyn Io>, Bytes>;

impl Established {
    /// Spawns the connection's task; the handle calls are sent on, and the state the pool
    /// reads.
    pub(super) fn drive(self, pool: &Arc<Pool>) -> (SendRequest<Bytes>, Arc<ConnectionState>) {
        let state = Arc::new(ConnectionState {
            in_flight: AtomicUsize::new(0),
            last_used_ms: AtomicU64::new(0),
            opened: Instant::now(),
            check: Notify::new(),
            pool_changed: Arc::clone(&pool.changed),
        });
        tokio::spawn(drive(
            self.connection,
            self.pings,
            Arc::clone(&state),
            Arc::downgrade(pool),
            pool.dialer.options.clone(),
        ));
        (self.sender, state)
    }
}

/// A connection whose HTTP/2 handshake is done: the handle calls are sent on, the connection
/// to drive, and its PING handle.
pub(super) struct Established {
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
    pool: Weak<Pool>,
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
                    if let Some(pool) = pool.upgrade() {
                        pool.remove(&state);
                    }
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
    pool: &Weak<Pool>,
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
            if pool.upgrade().is_some_and(|pool| pool.retire_if_extra(state)) {
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

impl ConnectionState {
    fn last_used(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed))
    }

    pub(super) fn touch(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(elapsed, Ordering::Relaxed);
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
