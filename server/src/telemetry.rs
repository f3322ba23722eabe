//! Logging and traces for `hangar-server`: the setup shared with the drone lives in
//! [`hangar_agent::telemetry`] (so that the controller does not link the drone's runtimes to get
//! it); this names what the server's parts use. Design: docs/design/observability.md.

pub use hangar_agent::telemetry::{
    GrpcTraceLayer, LogFormat, SPAN_TARGET, Telemetry, TraceArgs, TraceContext, context_of, current_context, enabled,
    inject_headers, set_parent, set_parent_from_headers,
};

/// Sets up logs and, with an endpoint, trace export; `service` is the default service name.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>, service: &str) -> anyhow::Result<Telemetry> {
    hangar_agent::telemetry::init(format, otlp_endpoint, service)
}
