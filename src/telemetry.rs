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
    let installed = match format.resolve(terminal) {
        LogFormat::Text => builder.with_ansi(terminal).try_init(),
        _ => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if installed.is_ok() {
        let _ = AUDIT_ON.set(tracing::enabled!(target: "audit", tracing::Level::INFO));
    }
}

/// Whether the subscriber [`init_logging_as`] installed takes audit lines, judged once
/// there: its filter is fixed from then on, and asking it costs a lookup of the current
/// dispatcher and a walk of the filter's directives, twice a request (issue 15). Unset
/// (another subscriber, as in tests): asked every time.
static AUDIT_ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

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
    pub path: AuditPath,
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

/// A request's path as its audit record holds it: inline when it is short, as nearly every
/// API path is, so that the record is the hand-over's one allocation (issue 15: the worker
/// allocates it, the writer thread frees it, and glibc makes such a free cost several
/// times a local one).
pub enum AuditPath {
    Inline(arrayvec::ArrayString<AUDIT_PATH_INLINE>),
    Heap(Box<str>),
}

/// The longest path an [`AuditPath`] holds inline.
const AUDIT_PATH_INLINE: usize = 96;

impl AuditPath {
    /// The longest path held inline.
    pub const INLINE: usize = AUDIT_PATH_INLINE;
}

impl From<&str> for AuditPath {
    fn from(path: &str) -> Self {
        arrayvec::ArrayString::from(path).map_or_else(|_| AuditPath::Heap(Box::from(path)), AuditPath::Inline)
    }
}

impl std::fmt::Debug for AuditPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::ops::Deref for AuditPath {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            AuditPath::Inline(p) => p,
            AuditPath::Heap(p) => p,
        }
    }
}

/// Whether audit lines are written (the `audit` target; `RUST_LOG` can silence it like any
/// target): a caller need not build a record that would be dropped.
pub fn audit_enabled() -> bool {
    match AUDIT_ON.get() {
        Some(on) => *on,
        None => tracing::enabled!(target: "audit", tracing::Level::INFO),
    }
}

/// Hands one decision to the audit writer. The line has the same shape as the tracing
/// JSON lines (`timestamp`, `level`, `message`, `target`, then the fields).
pub fn audit(r: AuditRecord) {
    if !audit_enabled() {
        return;
    }
    writer().send(Line::Decision(Box::new(r)));
}

/// Appends `r` as one JSON line (on the writer thread), fields in the order of the
/// tracing JSON lines. Written by hand into the writer's one buffer (issue 15): through
/// serde_json the line cost the writer thread twice as much, which on a sidecar sharing
/// its pod's cores is CPU taken from the requests.
fn write_decision(line: &mut Vec<u8>, r: &AuditRecord, stamp: &mut Stamp) {
    line.extend_from_slice(b"{\"timestamp\":\"");
    stamp.write(line, r.at);
    line.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"decision\",\"target\":\"audit\",\"request_id\":");
    json_str(line, r.request_id.as_str());
    line.extend_from_slice(b",\"client_ip\":\"");
    if let Some(ip) = r.client_ip {
        // An address's text needs no escaping.
        line.extend_from_slice(crate::pipeline::rewrite::IpText::of(ip).as_bytes());
    }
    line.extend_from_slice(b"\",\"method\":");
    json_str(line, r.method.as_str());
    for (name, value) in [
        (&b",\"path\":"[..], Some(&*r.path)),
        (b",\"route\":", r.route.as_deref()),
        (b",\"credential\":", r.credential.as_deref()),
        (b",\"credential_type\":", r.credential_type),
        (b",\"user\":", r.user.as_deref()),
        (b",\"outcome\":", Some(r.outcome)),
        (b",\"reason\":", r.reason),
    ] {
        line.extend_from_slice(name);
        json_str(line, value.unwrap_or(""));
    }
    let mut n = itoa::Buffer::new();
    line.extend_from_slice(b",\"status\":");
    line.extend_from_slice(n.format(r.status).as_bytes());
    line.extend_from_slice(b",\"latency_us\":");
    line.extend_from_slice(n.format(r.latency.as_micros() as u64).as_bytes());
    line.extend_from_slice(b",\"upstream_latency_us\":");
    line.extend_from_slice(n.format(r.upstream_latency.map_or(0, |d| d.as_micros() as u64)).as_bytes());
    line.extend_from_slice(b",\"trace_id\":\"");
    line.extend_from_slice(crate::pipeline::trace::hex_id(&r.trace_id).as_str().as_bytes());
    line.extend_from_slice(b"\"}\n");
}

/// A time as RFC 3339 UTC text to the microsecond (`2026-12-04T04:01:02.123456Z`, as the
/// tracing lines write it), the date and time of day formatted once per second: under
/// load nearly every line falls in the second before it.
#[derive(Default)]
struct Stamp {
    second: Option<u64>,
    /// `2026-12-04T04:01:02.` for `second`.
    prefix: Vec<u8>,
}

impl Stamp {
    fn write(&mut self, out: &mut Vec<u8>, at: SystemTime) {
        let Ok(since) = at.duration_since(SystemTime::UNIX_EPOCH) else {
            // Before 1970: never on a running clock; formatted whole.
            let text = chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            out.extend_from_slice(text.as_bytes());
            return;
        };
        let second = since.as_secs();
        if self.second != Some(second) {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let text = chrono::DateTime::<chrono::Utc>::from(whole).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            self.prefix.clear();
            self.prefix.extend_from_slice(text.trim_end_matches('Z').as_bytes());
            self.prefix.push(b'.');
            self.second = Some(second);
        }
        out.extend_from_slice(&self.prefix);
        let mut micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

/// `s` as a JSON string, escaped as serde_json escapes (quote, backslash, control
/// characters; the rest, UTF-8 included, as it is).
fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    // Nearly every value needs no escape: found in one pass without an early exit (which
    // the compiler turns into wide compares), then copied whole.
    if !b.iter().fold(false, |any, &c| any | (c < 0x20) | (c == b'"') | (c == b'\\')) {
        out.extend_from_slice(b);
        out.push(b'"');
        return;
    }
    let mut plain = 0;
    for (i, &c) in b.iter().enumerate() {
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&b[plain..i]);
        if short.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
        } else {
            out.extend_from_slice(short);
        }
        plain = i + 1;
    }
    out.extend_from_slice(&b[plain..]);
    out.push(b'"');
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

/// Lines waiting for the writer thread. When this many are queued (stdout is stuck or far
/// slower than the traffic), a new line is dropped and counted: the request path never
/// blocks on the log. The writer drains the queue every few milliseconds.
const AUDIT_QUEUE: usize = 65_536;

/// The writer's buffer: lines go to stdout in writes of about this size under load.
const AUDIT_BUFFER: usize = 64 * 1024;

/// How long the audit writer sleeps between drains of its queue under load. Each wake is a
/// switch to this thread on a core the proxy's worker may share (issue 15: at 5 ms the
/// sleeps were ~0.6% of that core's time under load); 20 ms at 30,000 requests/s is 600
/// lines, far inside [`AUDIT_QUEUE`], and an audit line reaches stdout at most that much
/// later.
const AUDIT_POLL: Duration = Duration::from_millis(20);

/// The sleep after a drain of fewer than [`BUSY_DRAIN`] lines: light traffic's lines
/// reach stdout within a few milliseconds, for the same few wakes a second.
const AUDIT_POLL_QUIET: Duration = Duration::from_millis(5);

/// Lines in one drain that make the writer sleep [`AUDIT_POLL`] rather than
/// [`AUDIT_POLL_QUIET`] (from ~1,600 requests/s on).
const BUSY_DRAIN: u32 = 32;

/// Polls that find the queue empty before the writer blocks instead (about a second).
const IDLE_POLLS: u32 = 200;

/// What the writer thread writes: a decision to format, or a line already made.
enum Line {
    Decision(Box<AuditRecord>),
    Raw(Vec<u8>),
}

impl Line {
    fn append_to(&self, out: &mut Vec<u8>, stamp: &mut Stamp) {
        match self {
            Line::Decision(r) => write_decision(out, r, stamp),
            Line::Raw(bytes) => out.extend_from_slice(bytes),
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
        use std::io::Write;
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
                let mut out = Vec::with_capacity(512);
                line.append_to(&mut out, &mut Stamp::default());
                let _ = std::io::stdout().lock().write_all(&out);
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
            // Lines are made in this one buffer and written when it is nearly full, or
            // when the queue is drained: no allocation per line, few writes.
            let mut out: Vec<u8> = Vec::with_capacity(AUDIT_BUFFER);
            let mut stamp = Stamp::default();
            let mut stdout = std::io::stdout();
            let mut flush = |out: &mut Vec<u8>, pending: &mut u64| {
                if !out.is_empty() {
                    let _ = stdout.write_all(out);
                    let _ = stdout.flush();
                    out.clear();
                }
                w2.fetch_add(*pending, Ordering::AcqRel);
                *pending = 0;
            };
            let mut pending = 0u64;
            let mut idle_polls = 0u32;
            let mut drained = 0u32;
            loop {
                let next = match rx.try_recv() {
                    Ok(line) => Some(line),
                    Err(std::sync::mpsc::TryRecvError::Empty) => {
                        if pending > 0 {
                            flush(&mut out, &mut pending);
                        }
                        let pause = if drained >= BUSY_DRAIN { AUDIT_POLL } else { AUDIT_POLL_QUIET };
                        drained = 0;
                        idle_polls += 1;
                        if idle_polls > IDLE_POLLS {
                            // Idle for a second: block until the next line instead of polling.
                            match rx.recv() {
                                Ok(line) => Some(line),
                                Err(_) => return,
                            }
                        } else {
                            // Under load, polling in batches: a blocking receive would wake
                            // this thread (a context switch) for every single request.
                            std::thread::sleep(pause);
                            None
                        }
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        flush(&mut out, &mut pending);
                        return;
                    }
                };
                if let Some(line) = next {
                    line.append_to(&mut out, &mut stamp);
                    // Freed here, after the line is made: the worker allocated it.
                    drop(line);
                    pending += 1;
                    drained = drained.saturating_add(1);
                    idle_polls = 0;
                    if out.len() >= AUDIT_BUFFER - 4096 {
                        flush(&mut out, &mut pending);
                    }
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

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in ["", "plain", "quote \" and \\ backslash", "tab\tnew\nline\rcr", "\u{0}\u{1f}\u{8}\u{c}\u{7f}", "żółw ✓ 🦀", "/v1/a%20b"] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn stamps_are_chronos_rfc3339_text_across_seconds() {
        let mut stamp = Stamp::default();
        let base = 1_764_820_862u64; // 2025-12-04
        for (secs, micros) in [(0, 0), (0, 1), (0, 999_999), (1, 0), (1, 500_000), (0, 7), (86_399, 42), (86_400 * 400, 123_456)] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(base + secs) + Duration::from_micros(micros);
            let mut out = Vec::new();
            stamp.write(&mut out, at);
            let want = chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        let before = SystemTime::UNIX_EPOCH - Duration::from_micros(1_500_000);
        let mut out = Vec::new();
        stamp.write(&mut out, before);
        assert_eq!(String::from_utf8(out).unwrap(), "1969-12-31T23:59:58.500000Z");
    }

    #[test]
    fn a_path_reads_back_whole_inline_or_not() {
        let at_the_edge = format!("/{}é", "a".repeat(AuditPath::INLINE - 3));
        let over = format!("{at_the_edge}/x");
        for p in ["", "/", "/v1/vaults/v-1/balances", "/ü/€", at_the_edge.as_str(), over.as_str()] {
            let held = AuditPath::from(p);
            assert_eq!(&*held, p);
            assert_eq!(matches!(held, AuditPath::Inline(_)), p.len() <= AuditPath::INLINE, "{p}");
        }
        assert_eq!(at_the_edge.len(), AuditPath::INLINE);
    }

    #[test]
    fn a_decision_line_has_every_field_in_order() {
        let r = AuditRecord {
            request_id: crate::proxy::RequestId::new(),
            client_ip: Some("203.0.113.9".parse().unwrap()),
            method: http::Method::GET,
            path: "/v1/\"odd\"\npath".into(),
            route: Some("balances".into()),
            credential: Some("key-1".into()),
            credential_type: Some("api_key"),
            user: None,
            outcome: "allowed",
            reason: None,
            status: 200,
            latency: Duration::from_micros(1234),
            upstream_latency: Some(Duration::from_micros(999)),
            trace_id: [0xab; 16],
            at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_900_000_000_123_456),
        };
        let mut out = Vec::new();
        write_decision(&mut out, &r, &mut Stamp::default());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "timestamp", "level", "message", "target", "request_id", "client_ip", "method", "path", "route",
                "credential", "credential_type", "user", "outcome", "reason", "status", "latency_us",
                "upstream_latency_us", "trace_id"
            ]
        );
        assert_eq!(v["timestamp"], "2030-03-17T17:46:40.123456Z");
        assert_eq!(v["request_id"], r.request_id.as_str());
        assert_eq!(v["client_ip"], "203.0.113.9");
        assert_eq!(v["path"], "/v1/\"odd\"\npath");
        assert_eq!(v["user"], "");
        assert_eq!(v["reason"], "");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_us"], 1234);
        assert_eq!(v["upstream_latency_us"], 999);
        assert_eq!(v["trace_id"], "ab".repeat(16));
    }

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
            line.append_to(&mut written, &mut Stamp::default());
        }
        assert_eq!(written, b"0\n1\n");
    }
}
