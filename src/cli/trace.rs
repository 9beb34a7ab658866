//! The CLI's tracing: logs on stderr, off unless `RUST_LOG` asks for them, so stdout stays
//! clean; and the job's trace. With the `opentelemetry` feature, a command runs in a span
//! continuing the trace given in `TRACEPARENT` (OpenTelemetry's environment carrier), so every
//! task it enqueues carries that trace; with `demo`, spans get trace IDs of their own and are
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use tracing::Span;

#[cfg(feature = "demo")]
#[path = "../../examples/backend/otel.rs"]
mod otel;

/// The environment variable a scheduler or CI job passes its trace context in.
const TRACEPARENT_VAR: &str = "TRACEPARENT";
#[cfg(feature = "opentelemetry")]
const TRACESTATE_VAR: &str = "TRACESTATE";

/// What must outlive the command: the exporters to flush at exit.
pub(super) struct Installed {
    #[cfg(feature = "demo")]
    telemetry: Option<otel::Telemetry>,
}

impl Installed {
    /// Exports what is buffered.
    pub(super) fn shutdown(self) {
        #[cfg(feature = "demo")]
        if let Some(telemetry) = self.telemetry {
            telemetry.shutdown();
        }
    }
}

/// Installs the subscriber.
pub(super) fn install() -> Installed {
    #[cfg(feature = "demo")]
    {
        match otel::Telemetry::init("off", "cloud-tasks") {
            Ok(telemetry) => Installed {
                telemetry: Some(telemetry),
            },
            Err(error) => {
                eprintln!("warning: OpenTelemetry export is off: {error}");
                logs_only();
                Installed { telemetry: None }
            }
        }
    }
    #[cfg(not(feature = "demo"))]
    {
        logs_only();
        Installed {}
    }
}

/// Logs, and (feature `opentelemetry`) OpenTelemetry's no-op tracer: it records nothing, but
/// gives each span the context of its parent, so the job's `TRACEPARENT` reaches every task.
fn logs_only() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(logs);
    #[cfg(feature = "opentelemetry")]
    let registry = registry.with(
        tracing_opentelemetry::layer().with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    registry.init();
}

/// The span a command runs in: a child of the job's `TRACEPARENT` when one is given.
pub(super) fn job_span() -> Span {
    let span = tracing::info_span!("cloud-tasks");
    let Ok(traceparent) = std::env::var(TRACEPARENT_VAR) else {
        return span;
    };
    #[cfg(feature = "opentelemetry")]
    {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let state = std::env::var(TRACESTATE_VAR).ok();
        match cloud_tasks::telemetry::parse_traceparent(&traceparent, state.as_deref()) {
            Some(parent) => {
                let parent = opentelemetry::Context::new().with_remote_span_context(parent);
                if let Err(error) = span.set_parent(parent) {
                    eprintln!(
                        "warning: cannot continue the trace in {TRACEPARENT_VAR}: {error}; \
                         the tasks will not carry it"
                    );
                }
            }
            None => eprintln!(
                "warning: {TRACEPARENT_VAR}={traceparent:?} is not a W3C traceparent \
                 (00-<32 hex digits>-<16 hex digits>-<2 hex digits>); the tasks will not carry \
                 the job's trace"
            ),
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    eprintln!(
        "warning: {TRACEPARENT_VAR}={traceparent:?} is set, but this cloud-tasks was built \
         without the `opentelemetry` feature; the tasks will not carry the job's trace"
    );
    span
}
