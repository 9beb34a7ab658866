//! W3C Trace Context through the task (feature `opentelemetry`): the enqueue side writes the
//! current context into the task's headers, the receiving side reads it back.
//!
//! The format is W3C's `traceparent` (`00-{trace id}-{span id}-{flags}`) and `tracestate`,
//! written and parsed here rather than by the SDK's propagator: the library depends on
//! OpenTelemetry's API only, and it needs the same value in a second header
//! ([`ENQUEUE_TRACEPARENT_HEADER`]) that a propagator would not write.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{ENQUEUE_TRACEPARENT_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER};

/// The context a task enqueued now belongs to: the current `tracing` span's, or for an
/// application that uses OpenTelemetry's API directly, OpenTelemetry's current context.
/// `None` when there is none (no subscriber with an OpenTelemetry layer, no active span).
fn current() -> Option<SpanContext> {
    let span = tracing::Span::current();
    let valid = |context: opentelemetry::Context| {
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| span_context.clone())
    };
    if !span.is_none()
        && let Some(span_context) = valid(span.context())
    {
        return Some(span_context);
    }
    valid(opentelemetry::Context::current())
}

/// Writes the current context into `headers` as `traceparent`, [`ENQUEUE_TRACEPARENT_HEADER`]
/// and `tracestate`, leaving any of them the caller set on the task.
pub(crate) fn inject(headers: &mut Vec<(String, String)>) {
    let Some(context) = current() else {
        return;
    };
    let traceparent = traceparent(&context);
    let state = context.trace_state().header();
    let mut add = |name: &str, value: String| {
        if !headers
            .iter()
            .any(|(set, _)| set.eq_ignore_ascii_case(name))
        {
            headers.push((name.to_owned(), value));
        }
    };
    add(ENQUEUE_TRACEPARENT_HEADER, traceparent.clone());
    add(TRACEPARENT_HEADER, traceparent);
    if !state.is_empty() {
        add(TRACESTATE_HEADER, state);
    }
}

/// `context` as a W3C `traceparent` value (version 00: only the sampled flag is defined).
pub(crate) fn traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        (context.trace_flags() & TraceFlags::SAMPLED).to_u8()
    )
}

/// Parses a W3C `traceparent` (and `tracestate`, if any) into a remote span context: the
/// context a task was enqueued in (the receiver) or a job was started in (`TRACEPARENT` for
/// the CLI). `None` for a value W3C says to ignore: malformed, version `ff`, or an all-zero
/// trace or span ID. A malformed `tracestate` is dropped, the `traceparent` kept, as W3C asks.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    let is_hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // Version 00 has exactly four fields; a later version may append more, read as 00.
    if !is_hex(version, 2)
        || version == "ff"
        || (version == "00" && parts.next().is_some())
        || !is_hex(trace_id, 32)
        || !is_hex(span_id, 16)
        || !is_hex(flags, 2)
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// The context `task` was given when it was created (its [`ENQUEUE_TRACEPARENT_HEADER`]).
pub(crate) fn of_task(task: &crate::proto::Task) -> Option<SpanContext> {
    let Some(crate::proto::MessageType::HttpRequest(request)) = &task.message_type else {
        return None;
    };
    let traceparent = request.headers.get(ENQUEUE_TRACEPARENT_HEADER)?;
    parse_traceparent(traceparent, None)
}

/// The producer's context in a delivery's headers: [`ENQUEUE_TRACEPARENT_HEADER`] when it is
/// there and valid, since Google's front ends rewrite `traceparent`; `traceparent` otherwise
/// (a task enqueued by another client, or a delivery that passed no front end).
#[cfg(feature = "receiver")]
pub(crate) fn extract(headers: &http::HeaderMap) -> Option<SpanContext> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let state = text(TRACESTATE_HEADER);
    text(ENQUEUE_TRACEPARENT_HEADER)
        .and_then(|value| parse_traceparent(value, state))
        .or_else(|| text(TRACEPARENT_HEADER).and_then(|value| parse_traceparent(value, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let context = parse_traceparent(EXAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(context.trace_state().header(), "congo=t61rcWkgMzE");
        assert_eq!(traceparent(&context), EXAMPLE);
    }

    #[test]
    fn values_w3c_says_to_ignore_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?}");
        }
        // A later version may add fields; the first four are read as version 00's.
        assert!(parse_traceparent(&format!("cc-{}-more", &EXAMPLE[3..]), None).is_some());
    }

    #[cfg(feature = "receiver")]
    #[test]
    fn the_enqueue_header_wins_over_a_rewritten_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT_HEADER,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00"
                .parse()
                .unwrap(),
        );
        headers.insert(ENQUEUE_TRACEPARENT_HEADER, EXAMPLE.parse().unwrap());
        let context = extract(&headers).unwrap();
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        headers.remove(ENQUEUE_TRACEPARENT_HEADER);
        let context = extract(&headers).unwrap();
        assert_eq!(context.span_id().to_string(), "1111111111111111");
    }
}
