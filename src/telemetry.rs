//! Logs: one JSON audit line per decision on stdout; operational logs as JSON too, or as
//! text for a person (`--log-format`).
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing_subscriber::EnvFilter;

/// How operational logs are written (`serve --log-format`). Audit lines are JSON always:
/// they are for machines, and they do not go through this subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text when stdout is a terminal, JSON otherwise (a container, a pipe, a file).
    #[default]
    Auto,
    /// One JSON object a line (`timestamp`, `level`, `message`, `target`, the fields).
    Json,
    /// `timestamp LEVEL target: message key=value`, coloured on a terminal.
    Text,
}

impl LogFormat {
    /// `Json` or `Text`: what `Auto` means when stdout is (`is_terminal`) or is not a terminal.
    pub fn resolve(self, is_terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if is_terminal => LogFormat::Text,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Installs the JSON subscriber (level from `RUST_LOG`, default `info`). Idempotent.
pub fn init_logging() {
    init_logging_as(LogFormat::Json);
}

/// Installs the subscriber in `format` (level from `RUST_LOG`, default `info`), on stdout.
/// Idempotent: a second call changes nothing.
pub fn init_logging_as(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    let _ = match format.resolve(terminal) {
        LogFormat::Text => builder.with_ansi(terminal).try_init(),
        _ => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// One decision, as written to the audit log. Holds no secret by construction: the
/// path is logged without its query, and credentials appear by name only.
///
/// Owned, and cheap to make: the names are shared (`Arc`) with the snapshot, the request
/// id with its headers. A proxy worker fills one in and hands it to the writer thread,
/// which formats the JSON line (issue 15: formatting it on the worker was the largest
/// cost of ours per request).
#[derive(Debug)]
pub struct AuditRecord {
    pub request_id: crate::proxy::RequestId,
    pub client_ip: Option<IpAddr>,
    pub method: http::Method,
    pub path: Box<str>,
    pub route: Option<Arc<str>>,
    pub credential: Option<Arc<str>>,
    pub credential_type: Option<&'static str>,
    pub user: Option<Arc<str>>,
    pub outcome: &'static str,
    pub reason: Option<&'static str>,
    pub status: u16,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    /// The W3C trace id: the caller's `traceparent`'s, or the one started for the request.
    pub trace_id: [u8; 16],
    /// When the decision was logged.
    pub at: SystemTime,
}

/// Whether audit lines are written (the `audit` target; `RUST_LOG` can silence it like any
/// target): a caller need not build a record that would be dropped.
pub fn audit_enabled() -> bool {
    tracing::enabled!(target: "audit", tracing::Level::INFO)
}

/// Hands one decision to the audit writer. The line has the same shape as the tracing
/// JSON lines (`timestamp`, `level`, `message`, `target`, then the fields).
pub fn audit(r: AuditRecord) {
    if !audit_enabled() {
        return;
    }
    writer().send(Line::Decision(Box::new(r)));
}

/// Writes `r` as one JSON line (on the writer thread).
fn write_decision(out: &mut impl std::io::Write, r: &AuditRecord) -> std::io::Result<()> {
    let trace_id = crate::pipeline::trace::hex_id(&r.trace_id);
    let line = AuditLine {
        timestamp: chrono::DateTime::<chrono::Utc>::from(r.at).to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        level: "INFO",
        message: "decision",
        target: "audit",
        request_id: r.request_id.as_str(),
        client_ip: r.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        method: r.method.as_str(),
        path: &r.path,
        route: r.route.as_deref().unwrap_or(""),
        credential: r.credential.as_deref().unwrap_or(""),
        credential_type: r.credential_type.unwrap_or(""),
        user: r.user.as_deref().unwrap_or(""),
        outcome: r.outcome,
        reason: r.reason.unwrap_or(""),
        status: r.status,
        latency_us: r.latency.as_micros() as u64,
        upstream_latency_us: r.upstream_latency.map(|d| d.as_micros() as u64).unwrap_or(0),
        trace_id: trace_id.as_str(),
    };
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
    out.write_all(b"\n")
}

/// Writes one management audit line (SPEC §9): `line` holds `kind: "management"` and the
/// fields of the request; the envelope (`timestamp`, `level`, `message`) is added here,
/// as on a decision's line. The caller puts no secret or hash in it.
pub fn audit_management(line: serde_json::Value) {
    if !tracing::enabled!(target: "audit", tracing::Level::INFO) {
        return;
    }
    let mut out = serde_json::Map::new();
    out.insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
    out.insert("level".into(), "INFO".into());
    out.insert("message".into(), "management".into());
    // No tracing `target` here: SPEC §9's line has a `target` of its own (the credential
    // or request acted on); `kind: "management"` tells these lines apart.
    if let serde_json::Value::Object(fields) = line {
        out.extend(fields);
    }
    let mut buf = Vec::with_capacity(512);
    if serde_json::to_writer(&mut buf, &out).is_ok() {
        buf.push(b'\n');
        writer().send(Line::Raw(buf));
    }
}

#[derive(serde::Serialize)]
struct AuditLine<'a> {
    timestamp: String,
    level: &'static str,
    message: &'static str,
    target: &'static str,
    request_id: &'a str,
    client_ip: String,
    method: &'a str,
    path: &'a str,
    route: &'a str,
    credential: &'a str,
    credential_type: &'a str,
    user: &'a str,
    outcome: &'a str,
    reason: &'a str,
    status: u16,
    latency_us: u64,
    upstream_latency_us: u64,
    trace_id: &'a str,
}

/// Lines waiting for the writer thread. When this many are queued (stdout is stuck or far
/// slower than the traffic), a new line is dropped and counted: the request path never
/// blocks on the log. The writer drains the queue every few milliseconds.
const AUDIT_QUEUE: usize = 65_536;

/// What the writer thread writes: a decision to format, or a line already made.
enum Line {
    Decision(Box<AuditRecord>),
    Raw(Vec<u8>),
}

impl Line {
    fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Line::Decision(r) => write_decision(out, r),
            Line::Raw(bytes) => out.write_all(bytes),
        }
    }
}

static WRITER: std::sync::OnceLock<AuditWriter> = std::sync::OnceLock::new();

/// Audit lines dropped so far (`portcullis_audit_lines_dropped_total`).
pub fn audit_lines_dropped() -> u64 {
    WRITER.get().map_or(0, |w| w.dropped.load(std::sync::atomic::Ordering::Relaxed))
}

struct AuditWriter {
    tx: std::sync::mpsc::SyncSender<Line>,
    sent: std::sync::atomic::AtomicU64,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    dropped: std::sync::atomic::AtomicU64,
}

impl AuditWriter {
    fn send(&self, line: Line) {
        use std::sync::atomic::Ordering;
        match self.tx.try_send(line) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::AcqRel);
            }
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                if before % 10_000 == 0 {
                    // Said once per 10,000 drops, not per request.
                    tracing::warn!(
                        dropped = before + 1,
                        "audit log queue is full: audit lines are being dropped (see portcullis_audit_lines_dropped_total)"
                    );
                }
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(line)) => {
                // The writer thread is gone: write here rather than lose the line.
                self.sent.fetch_add(1, Ordering::AcqRel);
                let _ = line.write_to(&mut std::io::stdout().lock());
                self.written.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
}

fn writer() -> &'static AuditWriter {
    WRITER.get_or_init(|| {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Line>(AUDIT_QUEUE);
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let w2 = written.clone();
        let spawned = std::thread::Builder::new().name("audit-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
            let mut pending = 0u64;
            let mut idle_polls = 0u32;
            loop {
                let next = match rx.try_recv() {
                    Ok(line) => Some(line),
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        if pending > 0 {
                            let _ = out.flush();
                            w2.fetch_add(pending, Ordering::AcqRel);
                            pending = 0;
                        }
                        idle_polls += 1;
                        if idle_polls > 200 {
                            // Idle for a second: block until the next line instead of polling.
                            match rx.recv() {
                                Ok(line) => Some(line),
                                Err(_) => return,
                            }
                        } else {
                            // Under load, polling in batches: a blocking receive would wake
                            // this thread (a context switch) for every single request.
                            std::thread::sleep(Duration::from_millis(5));
                            None
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        let _ = out.flush();
                        w2.fetch_add(pending, Ordering::AcqRel);
                        return;
                    }
                };
                if let Some(line) = next {
                    let _ = line.write_to(&mut out);
                    pending += 1;
                    idle_polls = 0;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the audit writer; audit lines are written inline");
        }
        AuditWriter { tx, sent: Default::default(), written, dropped: Default::default() }
    })
}

/// Waits (up to `timeout`) until every audit line sent so far is written: call before exit.
pub fn flush_audit(timeout: Duration) {
    use std::sync::atomic::Ordering;
    let w = writer();
    let deadline = std::time::Instant::now() + timeout;
    while w.written.load(Ordering::Acquire) < w.sent.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A stuck log (nobody reads the queue) costs a request nothing: once the queue is
    /// full, lines are dropped and counted, and `send` returns at once.
    #[test]
    fn auto_log_format_is_text_on_a_terminal_and_json_elsewhere() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Text);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
        assert_eq!(LogFormat::Text.resolve(false), LogFormat::Text);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let w = AuditWriter { tx, sent: Default::default(), written: Default::default(), dropped: Default::default() };
        for i in 0..5 {
            w.send(Line::Raw(format!("{i}\n").into_bytes()));
        }
        assert_eq!(w.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(w.sent.load(Ordering::Relaxed), 2);
        let mut written = Vec::new();
        for line in rx.try_iter() {
            line.write_to(&mut written).unwrap();
        }
        assert_eq!(written, b"0\n1\n");
    }
}
