//! The pool: which connection a call goes to, the room it holds there (a [`Slot`]), waiting
//! for room, and making connections in the background. It never reads or writes a frame; the
//! connections' tasks (`connection.rs`) tell it what changed through [`Pool::changed`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::BoxError;
use super::connection::{ConnectionState, Dialer};
use super::outcome::{NotSent, NotSentReason};

/// After a connection attempt fails while other connections are up, the next attempt waits this
/// long; calls meanwhile wait for room on the connections that work.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The connections to one endpoint, shared by every clone of the channel.
pub(super) struct Pool {
    pub(super) dialer: Dialer,
    connections: Mutex<Connections>,
    /// Woken when room may have appeared: a call ended, a connection was made or retired, or
    /// a connection attempt ended.
    pub(super) changed: Arc<Notify>,
}

#[derive(Default)]
struct Connections {
    open: Vec<PooledConnection>,
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

impl Pool {
    pub(super) fn new(dialer: Dialer) -> Self {
        Self {
            dialer,
            connections: Mutex::new(Connections::default()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// A connection with room for one more stream, and the slot that holds that room until
    /// the call ends. Waits for room, or for a connection made in the background.
    pub(super) async fn acquire(self: &Arc<Self>) -> Result<(SendRequest<Bytes>, Slot), BoxError> {
        // The attempts finished when this call started waiting on one.
        let mut waited_for: Option<u64> = None;
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the pool is read, so a change made after the read wakes it.
            notified.as_mut().enable();
            {
                let mut pool = self.lock();
                pool.open.retain_mut(PooledConnection::takes_new_streams);
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
                    && pool.open.is_empty()
                {
                    return Err(NotSent::status(
                        NotSentReason::Connect,
                        std::io::Error::other(failure.to_string()),
                    ));
                }
                if pool.should_connect(self.dialer.options.max_connections) {
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

    fn lock(&self) -> MutexGuard<'_, Connections> {
        // Every update leaves the pool consistent, so a panic elsewhere cannot leave it
        // half-made.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes an idle connection out of the pool if the pool has another one.
    pub(super) fn retire_if_extra(&self, state: &Arc<ConnectionState>) -> bool {
        let mut pool = self.lock();
        if pool.open.len() < 2 || state.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        pool.open
            .retain(|connection| !Arc::ptr_eq(&connection.state, state));
        tracing::debug!("idle extra HTTP/2 connection to Cloud Tasks closed");
        true
    }

    pub(super) fn remove(&self, state: &Arc<ConnectionState>) {
        self.lock()
            .open
            .retain(|connection| !Arc::ptr_eq(&connection.state, state));
    }
}

impl Connections {
    fn least_loaded_with_room(&self) -> Option<&PooledConnection> {
        self.open
            .iter()
            .filter(|connection| connection.room() > 0)
            .min_by_key(|connection| connection.state.in_flight.load(Ordering::Acquire))
    }

    /// Whether a new connection should be made for a call that found no room.
    fn should_connect(&self, max_connections: usize) -> bool {
        if self.connecting || self.open.len() >= max_connections {
            return false;
        }
        // With connections up, a failing endpoint is not hammered: their calls make room.
        match &self.last_failure {
            Some((_, failed_at)) if !self.open.is_empty() => failed_at.elapsed() >= RECONNECT_DELAY,
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
async fn connect_in_background(pool: Arc<Pool>) {
    // If the runtime shuts down mid-attempt, the guard still ends the attempt.
    let attempt = AttemptGuard {
        pool: Arc::downgrade(&pool),
        done: false,
    };
    let timeout = pool.dialer.options.connect_timeout;
    let result = match tokio::time::timeout(timeout, pool.dialer.connect()).await {
        Ok(result) => result,
        Err(_) => Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting took longer than {timeout:?}"),
        )) as BoxError),
    };
    match result {
        Ok(established) => {
            let (sender, state) = established.drive(&pool);
            attempt.finish(Ok(PooledConnection { sender, state }));
        }
        Err(error) => {
            tracing::debug!(%error, "connecting to Cloud Tasks failed");
            attempt.finish(Err(error));
        }
    }
}

struct AttemptGuard {
    pool: Weak<Pool>,
    done: bool,
}

impl AttemptGuard {
    fn finish(mut self, result: Result<PooledConnection, BoxError>) {
        self.done = true;
        self.record(result);
    }

    fn record(&self, result: Result<PooledConnection, BoxError>) {
        let Some(shared) = self.pool.upgrade() else {
            return;
        };
        {
            let mut pool = shared.lock();
            pool.connecting = false;
            pool.attempts_finished += 1;
            match result {
                Ok(connection) => {
                    pool.open.push(connection);
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

/// Room for one stream on a connection, held from before the request is sent until its answer
/// is read or abandoned.
pub(super) struct Slot {
    pub(super) state: Arc<ConnectionState>,
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
pub(super) struct CheckIfAbandoned {
    pub(super) slot: Option<Slot>,
    pub(super) sent: Instant,
    pub(super) ping_timeout: Duration,
}

impl CheckIfAbandoned {
    pub(super) fn answered(mut self) -> Option<Slot> {
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
