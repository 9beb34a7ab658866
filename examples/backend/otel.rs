//! Tracing for the example backend and the `cloud-tasks` binary built with `demo` (which
//! includes this file): logs to stderr as `RUST_LOG` asks, OpenTelemetry spans with trace IDs, and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans and metrics exported over OTLP (HTTP/protobuf;
//! the other standard `OTEL_*` variables apply too, e.g. `OTEL_SERVICE_NAME`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The installed providers; [`Telemetry::shutdown`] exports what is still buffered.
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Installs the subscriber: logs filtered by `RUST_LOG` (else `default_filter`), and the
    /// spans of level INFO and above for OpenTelemetry. Exports when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set; otherwise the spans still get trace IDs, which
    /// the demo prints.
    ///
    /// # Errors
    /// When the OTLP exporters cannot be built from the `OTEL_*` variables.
    pub fn init(
        default_filter: &str,
        service_name: &'static str,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let resource = match std::env::var_os("OTEL_SERVICE_NAME") {
            Some(_) => Resource::builder().build(),
            None => Resource::builder().with_service_name(service_name).build(),
        };
        let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let mut tracer_provider = SdkTracerProvider::builder().with_resource(resource.clone());
        let mut meter_provider = None;
        if exporting {
            tracer_provider = tracer_provider.with_batch_exporter(
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .build()?,
            );
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .build()?;
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_reader(PeriodicReader::builder(metrics).build())
                .build();
            // Before any instrument is made: the crate's instruments come from the global one.
            opentelemetry::global::set_meter_provider(provider.clone());
            meter_provider = Some(provider);
        }
        let tracer_provider = tracer_provider.build();
        let logs =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(logs),
            )
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer_provider.tracer(service_name))
                    .with_filter(LevelFilter::INFO),
            )
            .init();
        Ok(Self {
            tracer_provider,
            meter_provider,
        })
    }

    /// Exports what is buffered and stops the exporters.
    pub fn shutdown(self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            eprintln!("warning: exporting the last spans failed: {error}");
        }
        if let Some(provider) = self.meter_provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("warning: exporting the last metrics failed: {error}");
        }
    }
}
