//! Logs: one JSON audit line per decision on stdout, operational logs as JSON too.
use std::net::IpAddr;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber (level from `RUST_LOG`, default `info`). Idempotent.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}

/// One decision, as written to the audit log. Holds no secret by construction: the
/// path is logged without its query, and credentials appear by name only.
#[derive(Debug, Default)]
pub struct AuditRecord<'a> {
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub credential: Option<&'a str>,
    pub credential_type: Option<&'a str>,
    pub user: Option<&'a str>,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub status: u16,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
}

/// Writes one audit line (target `audit`).
pub fn audit(r: &AuditRecord<'_>) {
    tracing::info!(
        target: "audit",
        request_id = r.request_id,
        client_ip = r.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        method = r.method,
        path = r.path,
        route = r.route.unwrap_or(""),
        credential = r.credential.unwrap_or(""),
        credential_type = r.credential_type.unwrap_or(""),
        user = r.user.unwrap_or(""),
        outcome = r.outcome,
        reason = r.reason.unwrap_or(""),
        status = r.status,
        latency_us = r.latency.as_micros() as u64,
        upstream_latency_us = r.upstream_latency.map(|d| d.as_micros() as u64).unwrap_or(0),
        "decision"
    );
}
