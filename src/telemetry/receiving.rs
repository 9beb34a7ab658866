//! The receiving side's part: one processing span per delivery, linked to the span that
//! enqueued the task, the processing duration by outcome, and the deliveries refused before
//! processing.

use std::future::Future;
use std::time::Instant;

use http::HeaderMap;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{MESSAGING_SYSTEM_VALUE, attributes as attr};
use crate::receiver::{Rejection, TaskContext, TaskOutcome};

/// A delivery's processing: its span and when it started.
#[derive(Debug, Clone)]
pub(crate) struct Processing {
    span: Span,
    started: Instant,
    #[cfg(feature = "opentelemetry")]
    producer: Option<opentelemetry::trace::SpanContext>,
}

impl Processing {
    /// The messaging conventions' `process` span (CONSUMER) for a verified delivery, named
    /// `process {queue ID}`, with the task's retry count.
    ///
    /// The producer's context (feature `opentelemetry`) becomes a link, not the parent: a push
    /// delivery is handled inside the HTTP server's span, which is the parent when there is one
    /// (the conventions' default for this case), and each delivery of a retried task links to
    /// the same enqueue.
    pub(crate) fn start(headers: &HeaderMap, context: &TaskContext) -> Self {
        let span = tracing::info_span!(
            "process",
            otel.name = format!("process {}", context.queue_name),
            otel.kind = "consumer",
            otel.status_code = Empty,
            { attr::MESSAGING_SYSTEM } = MESSAGING_SYSTEM_VALUE,
            { attr::MESSAGING_OPERATION_NAME } = "process",
            { attr::MESSAGING_OPERATION_TYPE } = "process",
            { attr::MESSAGING_DESTINATION_NAME } = context.queue_name.as_str(),
            { attr::MESSAGING_MESSAGE_ID } = context.task_name.as_str(),
            { attr::RETRY_COUNT } = i64::from(context.retry_count),
            { attr::OUTCOME } = Empty,
        );
        #[cfg(feature = "opentelemetry")]
        let producer = super::context::extract(headers);
        #[cfg(feature = "opentelemetry")]
        if let Some(producer) = &producer {
            tracing_opentelemetry::OpenTelemetrySpanExt::add_link(&span, producer.clone());
        }
        #[cfg(not(feature = "opentelemetry"))]
        let _ = headers;
        Self {
            span,
            started: Instant::now(),
            #[cfg(feature = "opentelemetry")]
            producer,
        }
    }

    /// The context the task was enqueued in, as the delivery carries it.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn producer(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.producer.as_ref()
    }

    /// The processing span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `work` in the span, then records its outcome there and in the processing duration
    /// histogram.
    pub(crate) async fn run(
        &self,
        queue: &str,
        work: impl Future<Output = TaskOutcome>,
    ) -> TaskOutcome {
        let outcome = work.instrument(self.span.clone()).await;
        let name = outcome_name(&outcome);
        self.span.record(attr::OUTCOME, name);
        if !matches!(outcome, TaskOutcome::Done) {
            self.span.record("otel.status_code", "error");
        }
        #[cfg(feature = "opentelemetry")]
        super::metrics::instruments().process_duration.record(
            self.started.elapsed().as_secs_f64(),
            &[
                opentelemetry::KeyValue::new(attr::MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE),
                opentelemetry::KeyValue::new(attr::MESSAGING_OPERATION_NAME, "process"),
                opentelemetry::KeyValue::new(attr::MESSAGING_DESTINATION_NAME, queue.to_owned()),
                opentelemetry::KeyValue::new(attr::OUTCOME, name),
            ],
        );
        #[cfg(not(feature = "opentelemetry"))]
        let _ = (queue, self.started);
        outcome
    }
}

fn outcome_name(outcome: &TaskOutcome) -> &'static str {
    match outcome {
        TaskOutcome::Done => "done",
        TaskOutcome::RetryLater { .. } => "retry_later",
        TaskOutcome::GiveUp { .. } => "give_up",
    }
}

/// Counts a delivery refused before processing (feature `opentelemetry`), by the kind of
/// problem, the token check that failed and the status answered: every delivery refused behind
/// a misconfigured front end shows here, where no processing is recorded at all. Only these
/// bounded values become attributes; nothing the request's sender chose does (a queue or task
/// name read from an unverified request could be anything).
pub(crate) fn rejected(rejection: &Rejection) {
    #[cfg(feature = "opentelemetry")]
    {
        use opentelemetry::KeyValue;
        let (kind, check) = match rejection {
            Rejection::Token(error) => ("token", error.check()),
            Rejection::Headers(_) => ("headers", ""),
            Rejection::Payload { .. } => ("payload", ""),
        };
        let mut attributes = vec![
            KeyValue::new(attr::MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE),
            KeyValue::new(attr::ERROR_TYPE, kind),
            KeyValue::new(
                attr::HTTP_RESPONSE_STATUS_CODE,
                i64::from(rejection.status_code().as_u16()),
            ),
        ];
        if !check.is_empty() {
            attributes.push(KeyValue::new(attr::REJECTED_CHECK, check));
        }
        super::metrics::instruments()
            .rejected_deliveries
            .add(1, &attributes);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = rejection;
}
