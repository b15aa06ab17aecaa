//! The pingora [`ProxyHttp`] implementation: each phase a few lines that call the pipeline.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::{unix_now, CredentialKind, Shared, Snapshot};
use crate::pipeline::trace::{self, TraceContext};
use crate::pipeline::{self, client_ip, Decision, Identity, Permit, RequestView};
use crate::metrics::Outcome;
use crate::token::endpoint::{self, Answered, Reply, Which};
use crate::rejection::{Reason, Rejection};
use crate::telemetry::{self, AuditRecord};

/// The sidecar. Holds only the shared snapshot pointer; everything else is per request.
pub struct Portcullis {
    pub config: Shared,
    /// Requests in flight, for graceful shutdown.
    pub in_flight: Arc<crate::shutdown::InFlight>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// When each credential last authenticated (SPEC §9); `None` keeps no such record.
    pub last_used: Option<Arc<crate::last_used::LastUsed>>,
}

/// What a request turned out to be, as the phases learn it: one value, so the audit log
/// and the metrics read it rather than recombine partial answers.
enum Fate {
    /// Not judged: pingora failed before the pipeline ran.
    Unjudged,
    /// One of the sidecar's own endpoints answered (the token endpoint computes the client
    /// address itself).
    Endpoint { answered: Answered, client_ip: Option<IpAddr> },
    /// Refused before the pipeline (the Host check).
    Refused(Rejection),
    /// The pipeline decided; `failed` when forwarding an allowed request failed after.
    /// Boxed: the largest variant by far, and a request forwarded or refused alike has one.
    Decided { decision: Box<Decision>, failed: Option<Rejection> },
}

impl Fate {
    fn decision(&self) -> Option<&Decision> {
        match self {
            Fate::Decided { decision, .. } => Some(&**decision),
            _ => None,
        }
    }

    /// The refusal or failure that was answered, if any.
    fn rejection(&self) -> Option<&Rejection> {
        match self {
            Fate::Refused(r) | Fate::Decided { failed: Some(r), .. } => Some(r),
            Fate::Decided { decision, failed: None } => decision.result.as_ref().err(),
            Fate::Unjudged | Fate::Endpoint { .. } => None,
        }
    }

    /// Records a failure answered by `fail_to_proxy`.
    fn fail(&mut self, rej: Rejection) {
        match self {
            Fate::Decided { failed, .. } => *failed = Some(rej),
            _ => *self = Fate::Refused(rej),
        }
    }
}

/// The audit log's `outcome`: a request's (as in the metrics) or an own endpoint's.
#[derive(Clone, Copy)]
enum Audited {
    Request(Outcome),
    TokenIssued,
    TokenRefused,
    Served,
}

impl Audited {
    fn as_str(self) -> &'static str {
        match self {
            Audited::Request(o) => o.as_str(),
            Audited::TokenIssued => "token_issued",
            Audited::TokenRefused => "token_refused",
            Audited::Served => "served",
        }
    }
}

/// Per-request state, boxed (issue 15): pingora keeps the context in three places of each
/// request's future and moves that future into its box whole, so the context costs its size
/// three times over in copies on every request; a pointer costs eight bytes of them.
pub struct Ctx(Box<State>);

impl std::ops::Deref for Ctx {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for Ctx {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

/// What [`Ctx`] holds. The snapshot is loaded once, when the request starts.
pub struct State {
    snap: Arc<Snapshot>,
    request_id: RequestId,
    start: Instant,
    fate: Fate,
    upstream_start: Option<Instant>,
    _in_flight: crate::shutdown::InFlightGuard,
    /// The client hung up before the answer was complete (audited as 499 `client_closed`).
    client_closed: bool,
    /// pingora refused the request as malformed (answered 400 by `fail_to_proxy`).
    client_fault: bool,
    /// The W3C trace context, read (or started) when the request's head is in.
    trace: Option<TraceContext>,
    /// The TCP peer, read once in `request_filter` (the rewrite appends it to
    /// X-Forwarded-For).
    peer: IpAddr,
}

/// A random 128-bit request id, as 32 hex digits.
pub fn new_request_id() -> String {
    RequestId::new().as_str().to_string()
}

/// A request's id (32 hex digits of a random 128-bit number), held as the header value it
/// is sent as: the upstream's `x-auth-request-id` and the caller's `x-request-id` share
/// its one allocation.
#[derive(Clone, Debug)]
pub struct RequestId(http::HeaderValue);

impl RequestId {
    pub fn new() -> Self {
        let mut text = [0u8; 32];
        let mut id = [0u8; 16];
        trace::random_id(&mut id);
        trace::hex_out(&id, &mut text);
        // Hex digits only: always a valid header value. Cut from the thread's block of
        // values, so that sharing it with the answer costs a count, not a copy.
        RequestId(pipeline::values::value(&text).unwrap_or_else(|_| http::HeaderValue::from_static("0")))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value (shared, not copied).
    pub fn header(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Adds `x-request-id` to the upstream's answer, editing it as plain
/// [`http::response::Parts`] as the request's rewrite does (issue 15): no name parsed per
/// request, no second map of name spellings. The header names reach the caller in
/// canonical case, as the upstream's names reach the upstream's peer through Envoy.
fn add_request_id(resp: &mut ResponseHeader, id: &RequestId) -> Result<()> {
    // A reason phrase of the upstream's own (not the status's standard one) is kept.
    let reason = resp.get_reason_phrase().filter(|r| Some(*r) != resp.status.canonical_reason()).map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, placeholder).into();
    parts.headers.insert(X_REQUEST_ID, id.header());
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
}

/// Drops the caller's spellings of its header names from the request's head once it is
/// to be forwarded (issue 15). pingora keeps them in a second map beside the headers, to
/// write a head back with the names as they came; it clones that map into the upstream's
/// copy of the head, which [`pipeline::rewrite::rewrite`] then drops unread (the upstream
/// gets canonical names), and nothing reads the caller's head's map but that clone. A
/// request-target the URI does not reproduce byte for byte (absolute-form, say) is kept.
/// (`send_end_stream`, which only an HTTP/2 head carries, is not: this head is HTTP/1.)
fn drop_header_case(session: &mut Session) {
    let req = session.req_header_mut();
    if !req.has_case() {
        return;
    }
    let raw_target = pipeline::rewrite::verbatim_target(req);
    *req = RequestHeader::from(pipeline::rewrite::take_parts(req));
    if let Some(raw) = raw_target {
        // The bytes came from this head: setting them back cannot fail.
        let restored = req.set_raw_path(&raw);
        debug_assert!(restored.is_ok(), "the head's own target was refused");
    }
}

fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The request-target as the HTTP/1 request line carried it: the bytes between the first
/// and the last space (leading blank lines skipped, as the parser skips them). pingora's
/// parser drops a `#fragment` from the target it hands on; this keeps it, so sanity
/// refuses it as SPEC §5 step 2 asks. (pingora percent-encodes raw spaces and control
/// bytes in the line itself before we see it: docs/hardening.md.) `None` on HTTP/2.
fn request_line_target(session: &Session) -> Option<bytes::Bytes> {
    let raw = session.as_downstream().as_http1()?.get_headers_raw_bytes();
    let start = raw.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(raw.len());
    let line = &raw[start..];
    let mut end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    if end > 0 && line[end - 1] == b'\r' {
        end -= 1;
    }
    let first = line[..end].iter().position(|b| *b == b' ')?;
    let last = line[..end].iter().rposition(|b| *b == b' ')?;
    (last > first).then(|| raw.slice(start + first + 1..start + last))
}

/// Writes a rejection as the whole response.
async fn respond(session: &mut Session, rej: &Rejection, request_id: &RequestId) -> Result<()> {
    let request_id = request_id.as_str();
    let body = rej.body(request_id);
    let resp = rej.response_header(request_id, body.len())?;
    let req = session.req_header();
    // A body we did not read would be taken for the next request: close instead.
    let has_body = req.headers.contains_key(http::header::CONTENT_LENGTH)
        && req.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v != "0")
        || req.headers.contains_key(http::header::TRANSFER_ENCODING);
    // A CONNECT's framing is not a request's: never read on after one.
    if has_body || matches!(rej.reason, Reason::InvalidRequest | Reason::MethodNotAllowed) {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Writes one of the sidecar's own answers (token endpoint, JWKS, metadata).
async fn respond_reply(session: &mut Session, reply: &Reply, request_id: &RequestId) -> Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", reply.body.len().to_string())?;
    resp.insert_header("x-request-id", request_id.header())?;
    if reply.no_store {
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("pragma", "no-cache")?;
    } else {
        resp.insert_header("cache-control", "public, max-age=300")?;
    }
    if let Some(w) = &reply.www_authenticate {
        resp.insert_header("www-authenticate", w.as_str())?;
    }
    if let Some(a) = reply.allow {
        resp.insert_header("allow", a)?;
    }
    if let Some(secs) = reply.retry_after {
        resp.insert_header("retry-after", secs.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(reply.body.clone()), true).await?;
    Ok(())
}

impl Portcullis {
    /// Answers the token endpoint, the JWKS or the metadata; never forwarded.
    async fn own_endpoint(&self, session: &mut Session, ctx: &mut State, which: Which, peer: IpAddr) -> Result<bool> {
        let mut client_ip = None;
        let reply = match which {
            Which::Jwks => ctx.snap.tokens.as_ref().map(endpoint::jwks),
            Which::Metadata => ctx.snap.tokens.as_ref().map(endpoint::metadata),
            Which::Token if session.req_header().method != http::Method::POST => {
                session.set_keepalive(None);
                Some(endpoint::method_not_allowed(ctx.request_id.as_str()))
            }
            Which::Token => Some(self.token_request(session, ctx, peer, &mut client_ip).await),
        };
        let Some(reply) = reply else {
            return Error::e_explain(InternalError, "token settings vanished");
        };
        // A token issued is the client authenticating (with its secret).
        if let (Answered::Issued(client), Some(table)) = (&reply.outcome, &self.last_used) {
            table.record(client, unix_now());
        }
        respond_reply(session, &reply, &ctx.request_id).await?;
        ctx.fate = Fate::Endpoint { answered: reply.outcome, client_ip };
        Ok(true)
    }

    /// Notes that `identity` authenticated at `now`, whatever was decided after (a denial
    /// by address, route or permission still came from the credential). An external
    /// issuer's subject is not a credential of the file and is not noted.
    fn note_use(&self, identity: Option<&Identity>, now: i64) {
        if let (Some(table), Some(i)) = (&self.last_used, identity) {
            if i.kind != CredentialKind::External {
                table.record(&i.credential, now);
            }
        }
    }

    async fn token_request(&self, session: &mut Session, ctx: &State, peer: IpAddr, ip: &mut Option<IpAddr>) -> Reply {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > endpoint::MAX_BODY_BYTES {
                        session.set_keepalive(None);
                        return endpoint::OAuthError::too_large().reply(ctx.request_id.as_str());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    return endpoint::OAuthError::unreadable().reply(ctx.request_id.as_str());
                }
            }
        }
        let req = session.req_header();
        let xff = req.headers.get_all(pipeline::rewrite::X_FORWARDED_FOR).iter().map(|v| v.as_bytes());
        let client_ip = client_ip::client_ip(peer, xff, &ctx.snap.settings);
        *ip = Some(client_ip);
        let rid = ctx.request_id.as_str();
        let parsed = match endpoint::parse_request(&req.headers, &body) {
            Ok(p) => p,
            Err(e) => return e.reply(rid),
        };
        // A throttled client id or address is answered before any slot or thread, and only
        // after a pause (a tarpit, as sshd's penalties): a flood of them otherwise runs at
        // tens of thousands of answers a second and takes the CPU from the API's requests.
        if let Some(e) = endpoint::throttled(&ctx.snap, &parsed, client_ip) {
            tokio::time::sleep(endpoint::THROTTLED_PAUSE).await;
            return e.reply(rid);
        }
        // argon2 is slow and takes ~19 MiB per verification by design: at most
        // `max_concurrent_verifications` run at once, on lower-priority threads of their
        // own, so a flood costs bounded memory and leaves the proxy's workers free
        // (SPEC §6 abuse bounds).
        let snap = ctx.snap.clone();
        let max = snap.tokens.as_ref().map_or(1, |t| t.max_concurrent_verifications);
        let Some(slot) = crate::token::guard::guard().slot(max).await else {
            return endpoint::OAuthError::busy().reply(rid);
        };
        let issued = crate::token::verifier::run(max, move || {
            let issued = endpoint::issue(&snap, &parsed, client_ip, unix_now());
            drop(slot);
            issued
        })
        .await;
        endpoint::answer(issued.unwrap_or_else(|| Err(endpoint::OAuthError::server_error())), rid)
    }
}

#[async_trait]
impl ProxyHttp for Portcullis {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx(Box::new(State {
            snap: self.config.load_full(),
            request_id: RequestId::new(),
            start: Instant::now(),
            fate: Fate::Unjudged,
            upstream_start: None,
            _in_flight: self.in_flight.enter(),
            client_closed: false,
            client_fault: false,
            trace: None,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer = peer_ip(session);
        ctx.peer = peer;
        let line_target = request_line_target(session);
        let req = session.req_header();
        ctx.trace = Some(trace::from_headers(&req.headers));
        let target = line_target.as_deref().unwrap_or_else(|| req.raw_path());
        // Our own endpoints are recognised on the normalized path, as routes are: a
        // `/oauth/%74oken` must not slip past the token endpoint to the upstream. CONNECT
        // and malformed targets go to `decide`, which refuses them.
        let checked = if req.method != http::Method::CONNECT { pipeline::sanity::check_target(target).ok() } else { None };
        // The rare paths' futures are boxed on their own (issue 15): held inline, their
        // states (the token endpoint's above all) made this function's future, which
        // pingora boxes for every request, several KiB to allocate and copy.
        if let Some(path) = &checked {
            if let Some(which) = endpoint::which(&ctx.snap, &req.method, path.as_bytes()) {
                return Box::pin(self.own_endpoint(session, ctx, which, peer)).await;
            }
        }
        // RFC 9112 §3.2: one well-formed Host, required on HTTP/1.1 (SPEC §5 step 2).
        if let Err(rej) = pipeline::sanity::check_host(&req.headers, req.version == http::Version::HTTP_11) {
            Box::pin(respond(session, &rej, &ctx.request_id)).await?;
            ctx.fate = Fate::Refused(rej);
            return Ok(true);
        }
        let view = RequestView {
            method: &req.method,
            target,
            headers: &req.headers,
            peer,
            checked_path: checked.as_ref(),
        };
        let now = unix_now();
        let decision = pipeline::decide(&ctx.snap, &view, now);
        // From the head's arrival (the context is made then) to the decision: the checks
        // of the target, Host and headers are part of it, and no second clock reading.
        self.metrics.observe_auth(decision.identity.as_ref().map(|i| i.kind), ctx.start.elapsed());
        self.note_use(decision.identity.as_ref(), now);
        let denied = decision.result.as_ref().err().cloned();
        ctx.fate = Fate::Decided { decision: Box::new(decision), failed: None };
        match denied {
            None => {
                drop_header_case(session);
                Ok(false)
            }
            Some(rej) => {
                Box::pin(respond(session, &rej, &ctx.request_id)).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let s = &ctx.snap.settings;
        // Always an address here: the server resolves a name before it serves a snapshot.
        let Some(upstream) = s.upstream.addr() else {
            return Error::e_explain(ConnectError, "the upstream's name was not resolved");
        };
        let mut peer = match &s.upstream_tls {
            None => HttpPeer::new(upstream, false, String::new()),
            Some(t) => {
                let mut p = HttpPeer::new(upstream, true, t.sni.clone());
                p.options.verify_cert = t.verify;
                p.options.verify_hostname = t.verify;
                p.options.ca = t.ca.clone();
                p
            }
        };
        peer.options.connection_timeout = Some(s.upstream_connect_timeout);
        peer.options.total_connection_timeout = Some(s.upstream_connect_timeout);
        peer.options.read_timeout = Some(s.upstream_timeout);
        peer.options.write_timeout = Some(s.upstream_timeout);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let ctx: &mut State = ctx;
        let permit: &Permit = match ctx.fate.decision().map(|d| &d.result) {
            Some(Ok(p)) => p,
            _ => return Error::e_explain(InternalError, "no permit for a forwarded request"),
        };
        if upstream_request.headers.get(http::header::HOST).is_none() {
            // An HTTP/1.0 request without Host goes out with the upstream's host:port.
            upstream_request.insert_header("host", ctx.snap.settings.upstream_text.as_str())?;
        }
        let trace = *ctx.trace.get_or_insert_with(|| trace::from_headers(&session.req_header().headers));
        let note = tracing::enabled!(tracing::Level::DEBUG);
        let stripped = pipeline::rewrite::rewrite(upstream_request, permit, &ctx.request_id, ctx.peer, &trace, note)?;
        if !stripped.is_empty() {
            tracing::debug!(request_id = %ctx.request_id, headers = ?stripped, "removed caller-sent headers");
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // A switch of protocols is honoured only on a `websocket: true` route: anywhere
        // else the bytes after a 101 would pass unjudged (SPEC §5 step 8).
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            let allowed = matches!(ctx.fate.decision().map(|d| &d.result), Some(Ok(p)) if p.upgrade);
            if !allowed {
                return Err(Error::create(
                    HTTPStatus(502),
                    ErrorSource::Upstream,
                    Some("the upstream switched protocols on a route that does not allow it".into()),
                    None,
                ));
            }
        }
        // The caller can quote this id; it is the upstream's x-auth-request-id too.
        add_request_id(upstream_response, &ctx.request_id)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let rej = match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout => {
                Rejection::new(Reason::UpstreamTimeout, "the upstream did not answer in time")
            }
            _ if e.esource() == &ErrorSource::Upstream => {
                Rejection::new(Reason::UpstreamUnavailable, "the upstream could not be reached")
            }
            ConnectRefused | ConnectNoRoute | ConnectError => {
                Rejection::new(Reason::UpstreamUnavailable, "the upstream could not be reached")
            }
            ReadError | WriteError | ConnectionClosed if e.esource() == &ErrorSource::Downstream => {
                ctx.client_closed = true;
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            _ if e.esource() == &ErrorSource::Downstream => {
                // The client's fault, answered and audited: not an ERROR of ours either.
                ctx.client_fault = true;
                Rejection::new(Reason::InvalidRequest, "the request could not be read")
            }
            _ => {
                session.set_keepalive(None);
                let _ = session.respond_error(500).await;
                return FailToProxy { error_code: 500, can_reuse_downstream: false };
            }
        };
        let code = rej.reason.status();
        if session.response_written().is_none() {
            let _ = respond(session, &rej, &ctx.request_id).await;
        }
        session.set_keepalive(None);
        ctx.fate.fail(rej);
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    /// A client hanging up, or sending what pingora refuses as malformed, is not a sidecar
    /// error: pingora's "Fail to proxy" ERROR line is replaced by a debug line (the audit
    /// line says `client_closed`, or `denied` with `invalid_request`).
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, error: &Error) -> bool {
        if ctx.client_closed {
            tracing::debug!(request_id = %ctx.request_id, error = %error, "client closed the connection");
        } else if ctx.client_fault {
            tracing::debug!(request_id = %ctx.request_id, error = %error, "malformed request refused");
        }
        ctx.client_closed || ctx.client_fault
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        // 499 as nginx writes it: the client closed the connection before the answer.
        let status = if ctx.client_closed { 499 } else { session.response_written().map_or(0, |r| r.status.as_u16()) };
        let req = session.req_header();
        let raw = req.raw_path();
        let path_end = raw.iter().position(|b| *b == b'?').unwrap_or(raw.len());
        // Nearly always text: checked at once (word by word), lossily only when it is not.
        let path = std::str::from_utf8(&raw[..path_end])
            .map_or_else(|_| String::from_utf8_lossy(&raw[..path_end]), std::borrow::Cow::Borrowed);
        let d = ctx.fate.decision();
        let identity = d.and_then(|d| d.identity.as_ref());
        let shadow = d.and_then(|d| d.shadow_denied.as_ref()).map(|r| r.reason);
        let rejection = ctx.fate.rejection().map(|r| r.reason);
        let audited = match &ctx.fate {
            _ if ctx.client_closed => Audited::Request(Outcome::ClientClosed),
            Fate::Endpoint { answered: Answered::Issued(_), .. } => Audited::TokenIssued,
            Fate::Endpoint { answered: Answered::Refused(_), .. } => Audited::TokenRefused,
            Fate::Endpoint { answered: Answered::Served, .. } => Audited::Served,
            Fate::Unjudged => Audited::Request(Outcome::Error),
            _ => Audited::Request(match rejection {
                Some(r) if r.status() >= 500 => Outcome::Error,
                Some(_) => Outcome::Denied,
                None if shadow.is_some() => Outcome::ShadowDenied,
                None => Outcome::Allowed,
            }),
        };
        let (token_client, endpoint_ip) = match &ctx.fate {
            Fate::Endpoint { answered: Answered::Issued(c), client_ip, .. } => (Some(c.as_str()), *client_ip),
            Fate::Endpoint { client_ip, .. } => (None, *client_ip),
            _ => (None, None),
        };
        let reason = match &ctx.fate {
            Fate::Endpoint { answered: Answered::Refused(code), .. } => Some(code.as_str()),
            _ => rejection.or(shadow).map(|r| r.code()),
        };
        // One monotonic reading for both latencies.
        let ended = Instant::now();
        let latency = ended.saturating_duration_since(ctx.start);
        // One reading of the clock for the audit line's time and the metrics' second.
        let at = std::time::SystemTime::now();
        let now = crate::config::unix_seconds(at);
        // A request pingora refused before `request_filter` still has the caller's trace id.
        let trace_ctx = ctx.trace.unwrap_or_else(|| trace::from_headers(&req.headers));
        if telemetry::audit_enabled() || crate::otlp::enabled() {
            let record = AuditRecord {
                request_id: ctx.request_id.clone(),
                client_ip: d.and_then(|d| d.client_ip).or(endpoint_ip),
                method: req.method.clone(),
                path: telemetry::AuditPath::from(path.as_ref()),
                route: d.and_then(|d| d.route.clone()),
                credential: identity.map(|i| i.credential.clone()).or_else(|| token_client.map(Arc::from)),
                credential_type: identity.map(|i| i.kind.as_str()).or(token_client.map(|_| "client")),
                user: identity.and_then(|i| i.user.clone()),
                outcome: audited.as_str(),
                reason,
                status,
                latency,
                upstream_latency: ctx.upstream_start.map(|t| ended.saturating_duration_since(t)),
                trace_id: trace_ctx.trace_id,
                at,
            };
            crate::otlp::record(&record, &trace_ctx, latency);
            telemetry::audit(record);
        }
        match (&ctx.fate, audited) {
            (Fate::Endpoint { answered: Answered::Issued(client), .. }, _) => self.metrics.token_issued(&ctx.snap, client, now),
            (Fate::Endpoint { answered: Answered::Refused(code), .. }, _) => self.metrics.token_refused(*code),
            (Fate::Endpoint { .. }, _) => {}
            (_, Audited::Request(outcome)) => self.metrics.observe_request(&ctx.snap, &crate::metrics::RequestObservation {
                route: d.and_then(|d| d.route.as_deref()),
                credential: identity.map(|i| i.credential.as_ref()),
                kind: identity.map(|i| i.kind),
                outcome,
                status,
                reason: rejection.or(shadow),
                duration: latency,
                now,
            }),
            (_, _) => {}
        }
    }
}
