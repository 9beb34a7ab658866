//! What a failed call tells the retry policy: "not sent" (the server cannot have processed the
//! request, so sending it again cannot create a duplicate) or "may have been processed", from
//! what h2 reports. Owns no state; the request path (`mod.rs`) and the body call it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Code, Status};

use super::BoxError;

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
    pub(super) fn status(reason: NotSentReason, source: impl Into<BoxError>) -> BoxError {
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

    pub(super) fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// h2 refused to open the stream, so nothing of the request was queued. If the connection had
/// closed or received GOAWAY since the pool looked, nothing was sent; anything else is a
/// request h2 cannot send at all.
pub(super) fn refused(error: h2::Error) -> BoxError {
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
pub(super) fn response_failed(error: h2::Error) -> BoxError {
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
pub(super) fn call_failed(error: h2::Error) -> Status {
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
