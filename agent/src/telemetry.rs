//! Logs and traces for every Hangar process (the controller, the proxy, `dev`, the drone and its
//! executor): one setup, so that they cannot drift apart.
//!
//! Logs are text or JSON lines on stderr, filtered by `RUST_LOG`. Traces are off unless an OTLP
//! endpoint is given (`--otlp-endpoint URL` or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`): then
//! the spans Hangar opens (target [`SPAN_TARGET`]) go to that collector over OTLP/gRPC, batched
//! by a task on the tokio runtime, and W3C `traceparent` is read from and written to the calls
//! between the parts. Off, no OpenTelemetry layer is installed and no exporter task runs: the
//! span macros with [`SPAN_TARGET`] are disabled call sites (one relaxed load each), and the
//! helpers below return at once. The design, with the spans and attributes each part emits, is
//! in docs/design/observability.md.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber, span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub mod grpc;

pub use grpc::{GrpcTraceLayer, client_span, record_client_status, record_status};

/// The `tracing` target of every span meant for the trace exporter. Log lines never show these
/// spans (the log layer filters them out), so turning traces on does not change the logs.
pub const SPAN_TARGET: &str = "hangar::trace";

/// The environment variable that names the service in exported spans (OpenTelemetry's own).
pub const SERVICE_NAME_ENV: &str = "OTEL_SERVICE_NAME";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported: set once by [`init`] with an endpoint.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The `--otlp-endpoint` flag, shared by `hangar-server` and `hangar-drone`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceArgs {
    /// Export traces over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317, or https://
    /// for TLS with the system's roots). Unset: no traces, at no cost. The service name is
    /// OTEL_SERVICE_NAME, or hangar-controller, hangar-proxy, hangar-dev, hangar-drone or
    /// hangar-executor. Spans and their attributes: docs/design/observability.md.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_endpoint)]
    pub otlp_endpoint: Option<String>,
}

/// Checks an OTLP/gRPC endpoint: `http://` or `https://` with a host (and usually port 4317).
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let uri: http::Uri =
        text.parse().map_err(|err| format!("{text:?} is not a URL ({err}); expected e.g. http://127.0.0.1:4317"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(text.to_string()),
        _ => Err(format!(
            "{text:?}: expected http://HOST:PORT or https://HOST:PORT, the collector's OTLP/gRPC \
             listener (usually port 4317)"
        )),
    }
}

/// What [`init`] set up. Keep it until the process ends and call [`Telemetry::shutdown`] then,
/// so that the last spans are sent; dropping it without shutting down may lose them.
#[must_use = "keep it and call shutdown() at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans that ended so far now, instead of at the next batch. Blocks until the
    /// collector answered or the export timed out; call it from a blocking context (or
    /// `spawn_blocking`).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(err) = provider.force_flush()
        {
            tracing::warn!(error = %err, "cannot flush spans to the OTLP collector");
        }
    }

    /// Flushes the spans still waiting and stops the exporter.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else { return };
        ENABLED.store(false, Ordering::Relaxed);
        // The shutdown blocks until the batch task has exported; that task runs on this runtime,
        // so wait for it off the runtime's threads.
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(err)) = result {
            eprintln!("cannot flush the last spans to the OTLP collector: {err}");
        }
    }
}

/// Installs the process's logging and, with an endpoint, the trace exporter; `service` is the
/// default service name (OTEL_SERVICE_NAME wins). With an endpoint it must run inside a tokio
/// runtime: the batch exporter is a task on it. A second call (tests) keeps the first setup and
/// returns a [`Telemetry`] that exports nothing.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>, service: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journald gets plain lines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let fmt = log_layer(format, filter, std::io::stderr, ansi);

    let Some(endpoint) = otlp_endpoint else {
        let _ = Registry::default().with(fmt).try_init();
        return Ok(Telemetry { provider: None });
    };
    let endpoint = parse_endpoint(endpoint).map_err(anyhow::Error::msg)?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint.clone());
    if endpoint.starts_with("https://") {
        exporter = exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
    }
    let exporter =
        exporter.build().map_err(|err| anyhow::anyhow!("cannot set up the OTLP exporter for {endpoint}: {err}"))?;
    let service = std::env::var(SERVICE_NAME_ENV).ok().filter(|name| !name.is_empty()).unwrap_or(service.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    // The batch processor on tokio (the tonic exporter needs its reactor); OTEL_BSP_* tune it.
    let batch = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let provider = SdkTracerProvider::builder().with_span_processor(batch).with_resource(resource).build();
    // Hangar's own spans, and what is logged inside them (info and up) as their events.
    let for_traces = filter_fn(|meta| match meta.is_span() {
        true => meta.target() == SPAN_TARGET,
        false => *meta.level() <= tracing::Level::INFO,
    })
    .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("hangar"))
        .with_threads(false)
        .with_filter(for_traces);
    if Registry::default().with(fmt).with(otel).try_init().is_err() {
        // Someone else's subscriber is in place: nothing would reach this provider.
        let _ = provider.shutdown();
        return Ok(Telemetry { provider: None });
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    ENABLED.store(true, Ordering::Relaxed);
    tracing::info!(%endpoint, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider) })
}

/// The log lines' layer: what `filter` (RUST_LOG) enables, without Hangar's trace spans, written
/// by `writer`. Public so that a test can hold the same stack as a process does.
pub fn log_layer<S, W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Trace spans stay out of the log lines, whatever RUST_LOG says. Decided once per call site
    // from its metadata, with RUST_LOG's level as the hint, so that disabled levels stay as cheap
    // as with a plain filter.
    let hint = <EnvFilter as Filter<S>>::max_level_hint(&filter);
    let mut not_trace_spans = filter_fn(|meta| !(meta.is_span() && meta.target() == SPAN_TARGET));
    if let Some(hint) = hint {
        not_trace_spans = not_trace_spans.with_max_level_hint(hint);
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    fmt.with_filter(AskedEachTime(filter.and(not_trace_spans))).boxed()
}

/// A per-layer filter whose enabled call sites are asked again at every event instead of being
/// enabled for good ("always").
///
/// tracing-subscriber keeps each per-layer filter's last answer in a thread-local until the next
/// event consumes it. A question that no event of ours follows leaves a "no" behind, and the next
/// event of an always-enabled call site on that thread reads it and is dropped. sqlx's query
/// logger asks before every query (found by elimination: on PostgreSQL it runs on the store's
/// threads, and `sqlx=debug` made the lines come back): with RUST_LOG directives per target
/// (`info,hangar_server=debug`), every debug line the store wrote after a query was lost
/// (`server/tests/store_logs.rs`). Asked each time, an event sets its own answer first. Call
/// sites the filter disables stay disabled for good, so only enabled lines pay the question.
struct AskedEachTime<F>(F);

impl<S, F: Filter<S>> Filter<S> for AskedEachTime<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match self.0.callsite_enabled(meta) {
            interest if interest.is_always() => Interest::sometimes(),
            interest => interest,
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx)
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.0.on_record(id, values, cx)
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx)
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx)
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx)
    }
}

/// A trace context as carried in messages: `traceparent` (and `tracestate` when there is one),
/// the W3C Trace Context fields.
pub type TraceContext = BTreeMap<String, String>;

/// The context of `span` to send along, empty when traces are off or the span is not recorded.
pub fn context_of(span: &tracing::Span) -> TraceContext {
    let mut carrier = TraceContext::new();
    if enabled() {
        let context = span.context();
        if context.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&context, &mut MapCarrier(&mut carrier));
        }
    }
    carrier
}

/// The context of the current span (see [`context_of`]).
pub fn current_context() -> TraceContext {
    context_of(&tracing::Span::current())
}

/// Makes the context in `carrier` (from another process) the parent of `span`; nothing when
/// traces are off or the carrier holds no valid context. Call it before the span is entered.
pub fn set_parent(span: &tracing::Span, carrier: &TraceContext) {
    if enabled() && !carrier.is_empty() {
        let parent = TraceContextPropagator::new().extract(&MapReader(carrier));
        set_remote_parent(span, parent);
    }
}

/// Like [`set_parent`], from HTTP (or gRPC) request headers.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if enabled() && headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderReader(headers));
        set_remote_parent(span, parent);
    }
}

fn set_remote_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s context as `traceparent` (and `tracestate`) headers, replacing any there.
/// Nothing when traces are off, so that the headers pass through untouched then.
pub fn inject_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    for (name, value) in context_of(span) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
}

/// `message` as a gRPC request carrying the current span's context as `traceparent` metadata.
pub fn traced_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in current_context() {
        if let (Ok(name), Ok(value)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()),
            tonic::metadata::AsciiMetadataValue::try_from(value),
        ) {
            request.metadata_mut().insert(name, value);
        }
    }
    request
}

struct MapCarrier<'a>(&'a mut TraceContext);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapReader<'a>(&'a TraceContext);

impl Extractor for MapReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeaderReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_an_http_scheme_and_a_host() {
        assert_eq!(parse_endpoint("http://127.0.0.1:4317").unwrap(), "http://127.0.0.1:4317");
        assert!(parse_endpoint("https://otel.example:4317").is_ok());
        for bad in ["127.0.0.1:4317", "grpc://x:4317", "http://", "not a url"] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(err.contains("4317"), "{bad}: {err}");
        }
    }

    #[test]
    fn with_traces_off_nothing_is_propagated() {
        let span = tracing::info_span!(target: SPAN_TARGET, "off");
        assert!(context_of(&span).is_empty());
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        inject_headers(&span, &mut headers);
        assert_eq!(headers["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    }
}
