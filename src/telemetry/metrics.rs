//! The crate's instruments, through OpenTelemetry's global meter provider (feature
//! `opentelemetry`).
//!
//! The instruments are made on first use from the provider installed then, so an application
//! installs its provider before its first call or delivery (as for any library using the
//! global provider); with none installed they are no-ops.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::{InstrumentationScope, KeyValue};

use super::{MESSAGING_SYSTEM_VALUE, Rpc, Server, attributes as attr, metric_names as name};
use crate::client::Enqueued;
use crate::error::Error;

/// Bucket bounds (s) for calls that take milliseconds to tens of seconds: those of Google's
/// Rust client for `gcp.client.*`, which cover its 20 s attempt and 30 s call deadlines.
const DURATION_BOUNDS: [f64; 16] = [
    0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub(super) struct Instruments {
    call_duration: Histogram<f64>,
    attempt_duration: Histogram<f64>,
    sent_messages: Counter<u64>,
    retries: Counter<u64>,
    pace: Gauge<f64>,
    #[cfg(feature = "receiver")]
    pub(super) process_duration: Histogram<f64>,
    #[cfg(feature = "receiver")]
    pub(super) rejected_deliveries: Counter<u64>,
}

pub(super) fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        Instruments {
            call_duration: meter
                .f64_histogram(name::CALL_DURATION)
                .with_unit("s")
                .with_description("Duration of a logical call to Cloud Tasks, retries included")
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build(),
            attempt_duration: meter
                .f64_histogram(name::ATTEMPT_DURATION)
                .with_unit("s")
                .with_description("Duration of one attempt of a call to Cloud Tasks")
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build(),
            sent_messages: meter
                .u64_counter(name::SENT_MESSAGES)
                .with_unit("{message}")
                .with_description("Tasks enqueued, by outcome")
                .build(),
            retries: meter
                .u64_counter(name::RETRIES)
                .with_unit("{attempt}")
                .with_description("Attempts sent again, by the failure before them")
                .build(),
            pace: meter
                .f64_gauge(name::PACE)
                .with_unit("{message}/s")
                .with_description("The bulk enqueue's pace under its rate limit")
                .build(),
            #[cfg(feature = "receiver")]
            process_duration: meter
                .f64_histogram(name::PROCESS_DURATION)
                .with_unit("s")
                .with_description("Duration of a Cloud Tasks delivery's processing")
                .with_boundaries(DURATION_BOUNDS.to_vec())
                .build(),
            #[cfg(feature = "receiver")]
            rejected_deliveries: meter
                .u64_counter(name::REJECTED_DELIVERIES)
                .with_unit("{delivery}")
                .with_description("Deliveries refused before processing, by reason")
                .build(),
        }
    })
}

fn meter() -> Meter {
    opentelemetry::global::meter_with_scope(
        InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    )
}

/// Records `duration` with the method, the endpoint and, for a failure, `error.type` and the
/// status code. A success needs no allocation.
fn record_rpc(
    histogram: &Histogram<f64>,
    rpc: Rpc,
    server: &Server,
    duration: Duration,
    error: Option<&Error>,
) {
    let attributes = [
        KeyValue::new(attr::RPC_SYSTEM_NAME, "grpc"),
        KeyValue::new(attr::RPC_METHOD, rpc.full_method()),
        KeyValue::new(attr::SERVER_ADDRESS, server.metric_address.clone()),
        KeyValue::new(attr::SERVER_PORT, i64::from(server.port)),
    ];
    let seconds = duration.as_secs_f64();
    match error {
        None => histogram.record(seconds, &attributes),
        Some(error) => {
            let mut attributes = attributes.to_vec();
            attributes.push(KeyValue::new(attr::ERROR_TYPE, super::error_type(error)));
            if let Some(code) = super::response_code(error) {
                attributes.push(KeyValue::new(attr::RPC_RESPONSE_STATUS_CODE, code.as_str()));
            }
            histogram.record(seconds, &attributes);
        }
    }
}

pub(super) fn call_duration(rpc: Rpc, server: &Server, duration: Duration, error: Option<&Error>) {
    record_rpc(&instruments().call_duration, rpc, server, duration, error);
}

pub(super) fn attempt_duration(
    rpc: Rpc,
    server: &Server,
    duration: Duration,
    error: Option<&Error>,
) {
    record_rpc(
        &instruments().attempt_duration,
        rpc,
        server,
        duration,
        error,
    );
}

pub(super) fn retry(rpc: Rpc, error: &Error) {
    instruments().retries.add(
        1,
        &[
            KeyValue::new(attr::RPC_METHOD, rpc.full_method()),
            KeyValue::new(attr::ERROR_TYPE, super::error_type(error)),
        ],
    );
}

pub(super) fn task_outcome(server: &Server, result: &Result<Enqueued, Error>) {
    let system = KeyValue::new(attr::MESSAGING_SYSTEM, MESSAGING_SYSTEM_VALUE);
    let queue = KeyValue::new(
        attr::MESSAGING_DESTINATION_NAME,
        server.metric_queue.clone(),
    );
    let counter = &instruments().sent_messages;
    match result {
        Ok(Enqueued::Created { .. }) => {
            counter.add(1, &[system, queue, KeyValue::new(attr::OUTCOME, "created")]);
        }
        Ok(Enqueued::AlreadyExists { .. }) => {
            counter.add(
                1,
                &[
                    system,
                    queue,
                    KeyValue::new(attr::OUTCOME, "already_exists"),
                ],
            );
        }
        Err(error) => {
            let mut attributes = vec![
                system,
                queue,
                KeyValue::new(attr::OUTCOME, "failed"),
                KeyValue::new(attr::ERROR_TYPE, super::error_type(error)),
            ];
            if let Some(code) = super::response_code(error) {
                attributes.push(KeyValue::new(attr::RPC_RESPONSE_STATUS_CODE, code.as_str()));
            }
            counter.add(1, &attributes);
        }
    }
}

pub(super) fn pace(tasks_per_second: f64) {
    instruments().pace.record(tasks_per_second, &[]);
}
