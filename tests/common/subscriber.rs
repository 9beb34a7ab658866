//! A thread's own tracing subscriber that sibling tests cannot silence.
//!
//! tracing-core caches each callsite's interest process-wide, computed once, by the first thread
//! that reaches the callsite. While at most one dispatcher is registered it asks only the
//! *registering thread's* default (tracing-core 0.1.36, `Rebuilder::JustOne`;
//! tokio-rs/tracing#3611). A sibling test with no subscriber that reaches a `warn!` first caches
//! "never" for every thread, and a test capturing that `warn!` reads an empty log. CI lost a run
//! to exactly this in `tests/oidc.rs`.
//!
//! Keeping a second dispatcher registered for the life of the test binary sends every
//! registration down the path that asks all live dispatchers, the capturing one included; and
//! registering the capturing dispatcher re-asks every callsite registered before it.

use std::sync::OnceLock;

use tracing::Dispatch;
use tracing::subscriber::{DefaultGuard, NoSubscriber, Subscriber};

/// Sets `subscriber` as this thread's default until the guard drops, as
/// `tracing::subscriber::set_default` does, without the cross-thread interest race.
pub fn set_default(subscriber: impl Subscriber + Send + Sync + 'static) -> DefaultGuard {
    static SECOND_DISPATCHER: OnceLock<Dispatch> = OnceLock::new();
    SECOND_DISPATCHER.get_or_init(|| Dispatch::new(NoSubscriber::default()));
    tracing::subscriber::set_default(subscriber)
}
