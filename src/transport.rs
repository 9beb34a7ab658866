//! The channel calls go through: tonic's `Channel`, with each unary request body sent as one
//! complete chunk.
//!
//! tonic streams even a unary request body, and its body reports its end only after one more
//! poll, so h2 writes HEADERS, DATA and an empty END_STREAM frame with a system call each.
//! Collecting the (small, already encoded) body first lets h2 mark the DATA frame as the end
//! of the stream: one write fewer per call, which on loopback is most of a call's kernel time.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::codegen::{Service, StdError};
use tonic::transport::Channel;

/// A `Channel` that sends each request body as one complete chunk.
#[derive(Debug, Clone)]
pub(crate) struct WholeBodyChannel {
    channel: Channel,
}

impl WholeBodyChannel {
    pub(crate) fn new(channel: Channel) -> Self {
        Self { channel }
    }
}

impl Service<http::Request<Body>> for WholeBodyChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is not ready; the channel that was polled ready serves this call.
        let fresh = self.channel.clone();
        let ready = std::mem::replace(&mut self.channel, fresh);
        Box::pin(send_whole(ready, request))
    }
}

async fn send_whole(
    mut channel: Channel,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, StdError> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let request = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
    Ok(channel.call(request).await?)
}
