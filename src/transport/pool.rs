//! The pool: which connection a call goes to, the room it holds there (a [`Slot`]), waiting
//! for room, and making connections in the background. It never reads or writes a frame; the
//! connections' tasks (`connection.rs`) tell it what changed through [`Pool::changed`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
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
    /// Where calls wait for room; `mod.rs` lists who wakes it.
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
    /// The last failure to connect, if the last attempt failed or its connection was retired
    /// before it answered anything.
    last_failure: Option<Failure>,
}

struct Failure {
    message: Arc<str>,
    at: Instant,
    /// The server accepted the connection and retired it at once (GOAWAY or close before any
    /// answer): reconnecting at once would only repeat that.
    refused_at_once: bool,
}

struct PooledConnection {
    /// Cloned for each call; never used to send itself.
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
            let reconnect_at;
            {
                let mut pool = self.lock();
                pool.open
                    .retain(|connection| connection.state.takes_new_streams());
                if let Some(connection) = pool.least_loaded_with_room() {
                    connection.state.call_started();
                    let slot = Slot {
                        state: Arc::clone(&connection.state),
                    };
                    return Ok((connection.sender.clone(), slot));
                }
                // A call that waited for a connection attempt that failed gets that failure when
                // there is no connection to wait on instead; the retry policy's backoff paces
                // the next attempt.
                if let (Some(waited_for), Some(failure)) = (waited_for, &pool.last_failure)
                    && pool.attempts_finished > waited_for
                    && pool.open.is_empty()
                {
                    return Err(NotSent::status(
                        NotSentReason::Connect,
                        std::io::Error::other(failure.message.to_string()),
                    ));
                }
                reconnect_at = pool.may_connect(self.dialer.options.max_connections);
                if reconnect_at.is_some_and(|at| at <= Instant::now()) {
                    pool.connecting = true;
                    tokio::spawn(connect_in_background(Arc::clone(self)));
                }
                if pool.connecting {
                    waited_for.get_or_insert(pool.attempts_finished);
                }
            }
            match reconnect_at {
                // Nobody else wakes a call when the reconnect delay ends.
                Some(at) if at > Instant::now() => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                _ => notified.await,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Connections> {
        // Every update leaves the pool consistent, so a panic elsewhere cannot leave it
        // half-made.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether an idle connection should be closed: one retired already, or one the pool can
    /// spare (it is taken out): the only healthy connection is kept, whatever the others
    /// (closing, or with a PING unanswered) do.
    pub(super) fn retire_if_extra(&self, state: &Arc<ConnectionState>) -> bool {
        if state.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        // Already out of the pool (GOAWAY received) and done: nothing to keep it for.
        if !state.takes_new_streams() {
            return true;
        }
        let mut pool = self.lock();
        let another_healthy = pool.open.iter().any(|connection| {
            !Arc::ptr_eq(&connection.state, state) && connection.state.is_healthy()
        });
        if !another_healthy || state.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        // Under the lock: no call can take it from now on.
        state.retire();
        pool.open
            .retain(|connection| !Arc::ptr_eq(&connection.state, state));
        tracing::debug!("idle extra HTTP/2 connection to Cloud Tasks closed");
        true
    }

    /// A connection stopped taking new streams (GOAWAY, closed, found dead): out of the pool;
    /// if it never answered, the server refused it at once, which delays the next attempt.
    pub(super) fn retired(&self, state: &Arc<ConnectionState>) {
        {
            let mut pool = self.lock();
            pool.open
                .retain(|connection| !Arc::ptr_eq(&connection.state, state));
            if !state.ever_answered() {
                pool.last_failure = Some(Failure {
                    message: "the server closed the connection (or sent GOAWAY) before answering \
                              any call"
                        .into(),
                    at: Instant::now(),
                    refused_at_once: true,
                });
            }
        }
        self.changed.notify_waiters();
    }
}

impl Connections {
    fn least_loaded_with_room(&self) -> Option<&PooledConnection> {
        self.open
            .iter()
            .filter(|connection| connection.state.room() > 0)
            .min_by_key(|connection| connection.state.in_flight.load(Ordering::Acquire))
    }

    /// When a new connection may be made for a call that found no room: `None` if one is
    /// being made or settling, or the pool is full. After a failure, not before the reconnect delay if
    /// other connections are up (their calls make room) or the server refused the last
    /// connection at once; otherwise at once (the calls that waited got the failure, and the
    /// retry policy paces them).
    fn may_connect(&self, max_connections: usize) -> Option<Instant> {
        // A connection whose SETTINGS are not in yet will most likely have room.
        if self.connecting
            || self.open.len() >= max_connections
            || self
                .open
                .iter()
                .any(|connection| !connection.state.is_settled())
        {
            return None;
        }
        match &self.last_failure {
            Some(failure) if failure.refused_at_once || !self.open.is_empty() => {
                Some(failure.at + RECONNECT_DELAY)
            }
            _ => Some(Instant::now()),
        }
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
    let connecting = pool.dialer.connect(Arc::clone(&pool.changed));
    let result = match tokio::time::timeout(timeout, connecting).await {
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
                // Retired already (closed before the pool took it): `retired` recorded why.
                Ok(connection) if !connection.state.takes_new_streams() => {}
                Ok(connection) => {
                    pool.open.push(connection);
                    pool.last_failure = None;
                }
                Err(error) => {
                    pool.last_failure = Some(Failure {
                        message: error.to_string().into(),
                        at: Instant::now(),
                        refused_at_once: false,
                    });
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
        self.state.call_ended();
        // One slot frees room for one call.
        self.state.pool_changed.notify_one();
    }
}
