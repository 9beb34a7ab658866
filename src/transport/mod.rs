//! The HTTP/2 connections every call goes through: a small pool on `h2`, under the generated
//! tonic stubs.
//!
//! Why not tonic's `Channel`: the crate must know, for every failed call, whether the request
//! may have reached Cloud Tasks (an unnamed task is sent again only if it cannot have), and the
//! channel hides that behind its own errors and queues. Here each outcome of h2 maps to one
//! answer (see [`NotSent`]): nothing handed to h2, a stream refused, a stream above a GOAWAY's
//! last-stream-id are "not sent"; everything else may have been processed.
//!
//! The parts, and who owns what:
//! - this file: [`Http2Channel`], the tower `Service` the stubs call, and the request path
//!   (take a slot, hand HEADERS and DATA to h2 from the caller's task, await the answer's
//!   headers);
//! - `pool.rs` owns the list of connections (one mutex) and the [`Notify`](tokio::sync::Notify)
//!   calls wait on for room: where a call goes, the room it holds (a `Slot`, released when the
//!   call ends), connecting in the background, retiring connections;
//! - `connection.rs` owns each connection: dialing, the HTTP/2 handshake, and the task that
//!   drives it, keeps its `ConnectionState` (stream limit, open, PING out, last frame
//!   received) up to date for the pool, and checks it with PINGs;
//! - `outcome.rs`: "not sent" or "may have been processed", from h2's errors;
//! - `body.rs`: the answer's body, which holds the call's slot until it is read or dropped.
//!
//! A connection takes calls as soon as it is dialed: the first goes out with the connection
//! preface, the others wait for the server's SETTINGS (its stream limit), then at most that
//! limit (100 if it announces none) go on it. It takes no new call once it received GOAWAY or
//! closed, or while a PING on it is unanswered. With calls outstanding and nothing received
//! for half the keepalive timeout it gets a PING; no answer by the keepalive timeout closes it,
//! which fails its calls at once. Without calls it gets a PING only after the keepalive
//! interval (2 hours by default: gRPC servers punish more), and is closed after 90 s if the
//! pool has another healthy connection.
//!
//! Every wake-up of a call waiting for room, and who sends it (all through the pool's
//! `Notify`, except the last):
//!
//! | event | woken by | wakes |
//! |---|---|---|
//! | a call ends (its slot is dropped) | `Slot::drop` | one waiter |
//! | a connection attempt ends, made or failed | `AttemptGuard::record` | all |
//! | the server's first SETTINGS arrive, or a later one raises the limit | `Driven::observe` | all |
//! | GOAWAY received, the connection closed, found dead, its task gone | `Driven::retire` -> `Pool::retired` | all |
//! | a PING is answered (the connection takes calls again) | `Keepalive::answered` | all |
//! | the reconnect delay ends | the waiting call's own timer in `Pool::acquire` | itself |
//!
//! A waiter registers before it reads the pool, so an event between its read and its wait
//! still wakes it.

mod body;
mod connection;
mod outcome;
mod pool;

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Uri};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codegen::Service;

pub(crate) use body::ResponseBody;
#[cfg(feature = "receiver")]
pub(crate) use connection::root_certificates;
pub(crate) use connection::{ConnectionOptions, Security, SetupError};
pub(crate) use outcome::{NotSent, NotSentReason, RequestWritten};

use outcome::{call_failed, refused, response_failed};
use pool::Pool;

type BoxError = Box<dyn StdError + Send + Sync>;

/// A cheap, cloneable handle on the pool of connections to one endpoint; a tower `Service`
/// that the generated stubs call.
#[derive(Clone)]
pub(crate) struct Http2Channel {
    pool: Arc<Pool>,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for Http2Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Channel")
            .field("dialer", &self.pool.dialer)
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
        let dialer = connection::Dialer::new(endpoint, security, options)?;
        Ok(Self {
            pool: Arc::new(Pool::new(dialer)),
            user_agent: HeaderValue::from_static(user_agent),
        })
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
        Box::pin(send(
            Arc::clone(&self.pool),
            self.user_agent.clone(),
            request,
        ))
    }
}

/// One call: room on a connection, HEADERS and DATA handed to h2 from the caller's task, then
/// the answer's headers.
async fn send(
    pool: Arc<Pool>,
    user_agent: HeaderValue,
    request: http::Request<Body>,
) -> Result<http::Response<ResponseBody>, BoxError> {
    let (mut parts, body) = request.into_parts();
    // A unary message, already encoded: one chunk, so this does not wait.
    let body = body.collect().await?.to_bytes();
    let written = parts.extensions.remove::<RequestWritten>();
    let mut uri = http::uri::Parts::from(std::mem::take(&mut parts.uri));
    uri.scheme = Some(pool.dialer.scheme.clone());
    uri.authority = Some(pool.dialer.authority.clone());
    parts.uri = Uri::from_parts(uri)?;
    parts.headers.insert(http::header::USER_AGENT, user_agent);

    let (mut sender, slot) = pool.acquire().await?;
    let end_of_stream = body.is_empty();
    let (response, mut stream) = sender
        .send_request(http::Request::from_parts(parts, ()), end_of_stream)
        .map_err(refused)?;
    if let Some(written) = written {
        written.set();
    }
    if !end_of_stream {
        // Queued right behind the HEADERS, so both usually go out in one write: always when the
        // connection's task runs on this thread (a current-thread runtime), while on a
        // multi-thread runtime a worker woken by the HEADERS may write them first. h2 waits
        // for flow-control capacity itself if the body is larger than the window.
        if let Err(error) = stream.send_data(body, true) {
            // The stream ended in between (refused, above a GOAWAY's last-stream-id, its
            // connection closed): its answer says which.
            return Err(match response.await {
                Err(reason) => response_failed(reason),
                Ok(_) => Box::new(call_failed(error)),
            });
        }
    }
    let response = response.await.map_err(response_failed)?;
    slot.state.answered();
    Ok(response.map(|body| ResponseBody {
        body,
        data_done: false,
        _slot: slot,
    }))
}
