//! Optional OTLP export of one span per request (off by default): `serve --otlp-endpoint
//! http://collector:4318` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`). A span carries
//! the caller's trace id (W3C `traceparent`, or the one the sidecar started), its parent,
//! the route, the credential's name and the outcome — never a secret — and goes out in
//! batches over OTLP/HTTP (JSON) from the SDK's own thread; the request path only hands
//! the span over. When no endpoint is set nothing is built and the check is one load.
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::pipeline::trace::TraceContext;
use crate::telemetry::AuditRecord;

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

thread_local! {
    /// The ids the next span on this thread must have (the SDK asks its id generator).
    static NEXT: std::cell::Cell<Option<(TraceId, SpanId)>> = const { std::cell::Cell::new(None) };
}

/// Gives a span the ids the request already has: its trace id (the caller's, or the one
/// started for the upstream) and its span id; random ids only when none were set.
#[derive(Debug)]
struct RequestIds;

impl opentelemetry_sdk::trace::IdGenerator for RequestIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT.with(|n| n.get()).map_or_else(|| TraceId::from_bytes(rand::random()), |(t, _)| t)
    }
    fn new_span_id(&self) -> SpanId {
        NEXT.with(|n| n.get()).map_or_else(|| SpanId::from_bytes(rand::random()), |(_, s)| s)
    }
}

/// The traces URL for `endpoint`: a base (`http://collector:4318`) gets OTLP/HTTP's
/// `/v1/traces`; a URL that names a path is taken as it is.
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    let after_scheme = e.split_once("://").map_or(e, |(_, rest)| rest);
    if after_scheme.contains('/') {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    }
}

/// Starts the exporter when an endpoint is given (the flag, else
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`).
pub fn init(flag: Option<&str>) -> Result<bool, String> {
    let endpoint = match flag.map(str::to_string).or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok()) {
        Some(e) => e,
        None => match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Ok(e) => traces_url(&e),
            Err(_) => return Ok(false),
        },
    };
    let url = traces_url(&endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("OTLP exporter for {url}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder_empty().with_service_name("portcullis").build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_id_generator(RequestIds)
        .build();
    let tracer = provider.tracer("portcullis");
    let _ = EXPORTER.set(Exporter { provider, tracer });
    tracing::info!(endpoint = %url, "exporting one OTLP span per request");
    Ok(true)
}

/// Hands one request's span to the exporter (nothing when export is off).
/// Whether spans are exported (`serve --otlp-endpoint`).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

pub fn record(r: &AuditRecord, trace: &TraceContext, latency: Duration) {
    let Some(ex) = EXPORTER.get() else { return };
    let end = SystemTime::now();
    let start = end.checked_sub(latency).unwrap_or(end);
    let trace_id = TraceId::from_bytes(trace.trace_id);
    // A started trace's parent id is what the upstream saw as its parent: this span.
    // A caller's is the caller's span: this one is its child.
    let (span_id, parent) = if trace.started {
        (SpanId::from_bytes(trace.parent_id), None)
    } else {
        let mut id = [0u8; 8];
        crate::pipeline::trace::random_id(&mut id);
        (SpanId::from_bytes(id), Some(SpanId::from_bytes(trace.parent_id)))
    };
    let cx = match parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(trace_id, p, TraceFlags::SAMPLED, true, TraceState::default())),
        None => Context::new(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method.to_string()),
        KeyValue::new("url.path", r.path.to_string()),
        KeyValue::new("http.response.status_code", r.status as i64),
        KeyValue::new("portcullis.outcome", r.outcome.to_string()),
        KeyValue::new("portcullis.request_id", r.request_id.to_string()),
    ];
    for (k, v) in [
        ("http.route", r.route.as_deref()),
        ("portcullis.credential", r.credential.as_deref()),
        ("portcullis.credential_type", r.credential_type),
        ("portcullis.reason", r.reason),
    ] {
        if let Some(v) = v {
            attributes.push(KeyValue::new(k, v.to_string()));
        }
    }
    if let Some(ip) = r.client_ip {
        attributes.push(KeyValue::new("client.address", ip.to_string()));
    }
    let name = match r.route.as_deref() {
        Some(route) => route.to_string(),
        None => format!("{} (no route)", r.method),
    };
    NEXT.with(|n| n.set(Some((trace_id, span_id))));
    let mut span = ex
        .tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&ex.tracer, &cx);
    NEXT.with(|n| n.set(None));
    span.end_with_timestamp(end);
}

/// Sends what is queued (at shutdown).
pub fn shutdown() {
    if let Some(ex) = EXPORTER.get() {
        let _ = ex.provider.force_flush();
        let _ = ex.provider.shutdown_with_timeout(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_endpoint_gets_the_traces_path_and_a_full_url_stays() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://127.0.0.1:4318/"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/custom/traces"), "http://c:4318/custom/traces");
    }
}
