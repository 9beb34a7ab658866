//! The answer's body, read straight from the h2 stream. It holds the call's room on its
//! connection (a [`Slot`]) until it is read to the end or dropped.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::Frame;
use tonic::Status;

use super::outcome::call_failed;
use super::pool::Slot;

/// A response body: its data, then its trailers (where gRPC puts the status).
pub(crate) struct ResponseBody {
    pub(super) body: h2::RecvStream,
    pub(super) data_done: bool,
    pub(super) _slot: Slot,
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
