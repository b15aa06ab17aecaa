//! The pingora [`ProxyHttp`] implementation: each phase a few lines that call the pipeline.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::{unix_now, Shared, Snapshot};
use crate::pipeline::{self, client_ip, Decision, Permit, RequestView};
use crate::token::endpoint::{self, Reply, Which};
use crate::rejection::{Reason, Rejection};
use crate::telemetry::{self, AuditRecord};

/// The sidecar. Holds only the shared snapshot pointer; everything else is per request.
pub struct Portcullis {
    pub config: Shared,
    /// Requests in flight, for graceful shutdown.
    pub in_flight: Arc<crate::shutdown::InFlight>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Per-request state. The snapshot is loaded once, when the request starts.
pub struct Ctx {
    snap: Arc<Snapshot>,
    request_id: String,
    start: Instant,
    decision: Option<Decision>,
    /// A denial or failure already answered (for the audit log).
    rejection: Option<Rejection>,
    upstream_start: Option<Instant>,
    _in_flight: crate::shutdown::InFlightGuard,
    /// The sidecar's own endpoint answered, with the client or OAuth error code.
    endpoint: Option<(Which, std::result::Result<String, &'static str>)>,
    /// The client address, when computed outside `decide` (token endpoint).
    client_ip: Option<IpAddr>,
    /// The client hung up before the answer was complete (audited as 499 `client_closed`).
    client_closed: bool,
    /// pingora refused the request as malformed (answered 400 by `fail_to_proxy`).
    client_fault: bool,
}

/// A random 128-bit request id, as 32 hex digits.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The request-target exactly as the HTTP/1 request line carried it: the bytes between
/// the first and the last space. pingora's parser drops a `#fragment` and re-encodes raw
/// spaces and control bytes before the target reaches us; SPEC §5 step 2 wants both
/// refused, not rewritten, so sanity sees these bytes. `None` on HTTP/2 (no request line).
fn request_line_target(session: &Session) -> Option<bytes::Bytes> {
    let raw = session.as_downstream().as_http1()?.get_headers_raw_bytes();
    let mut end = raw.iter().position(|b| *b == b'\n').unwrap_or(raw.len());
    if end > 0 && raw[end - 1] == b'\r' {
        end -= 1;
    }
    let first = raw[..end].iter().position(|b| *b == b' ')?;
    let last = raw[..end].iter().rposition(|b| *b == b' ')?;
    (last > first).then(|| raw.slice(first + 1..last))
}

/// Writes a rejection as the whole response.
async fn respond(session: &mut Session, rej: &Rejection, request_id: &str) -> Result<()> {
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
async fn respond_reply(session: &mut Session, reply: &Reply, request_id: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(reply.status, Some(6))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", reply.body.len().to_string())?;
    resp.insert_header("x-request-id", request_id)?;
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
    async fn own_endpoint(&self, session: &mut Session, ctx: &mut Ctx, which: Which, peer: IpAddr) -> Result<bool> {
        let reply = match which {
            Which::Jwks => ctx.snap.tokens.as_ref().map(endpoint::jwks),
            Which::Metadata => ctx.snap.tokens.as_ref().map(endpoint::metadata),
            Which::Token if session.req_header().method != http::Method::POST => {
                session.set_keepalive(None);
                Some(endpoint::method_not_allowed(&ctx.request_id))
            }
            Which::Token => Some(self.token_request(session, ctx, peer).await),
        };
        let Some(reply) = reply else {
            return Error::e_explain(InternalError, "token settings vanished");
        };
        respond_reply(session, &reply, &ctx.request_id).await?;
        ctx.endpoint = Some((which, reply.outcome));
        Ok(true)
    }

    async fn token_request(&self, session: &mut Session, ctx: &mut Ctx, peer: IpAddr) -> Reply {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > endpoint::MAX_BODY_BYTES {
                        session.set_keepalive(None);
                        return endpoint::OAuthError::too_large().reply(&ctx.request_id);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    return endpoint::OAuthError::unreadable().reply(&ctx.request_id);
                }
            }
        }
        let req = session.req_header();
        let headers = req.headers.clone();
        let xff = headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes());
        let client_ip = client_ip::client_ip(peer, xff, &ctx.snap.settings);
        ctx.client_ip = Some(client_ip);
        let snap = ctx.snap.clone();
        let rid = ctx.request_id.clone();
        // argon2 is slow and takes ~19 MiB per verification by design: at most
        // `max_concurrent_verifications` run at once, so a flood costs bounded memory
        // and leaves the proxy's workers free (SPEC §6 abuse bounds).
        let max = snap.tokens.as_ref().map_or(1, |t| t.max_concurrent_verifications);
        let Some(slot) = crate::token::guard::guard().slot(max).await else {
            return endpoint::OAuthError::busy().reply(&ctx.request_id);
        };
        let job = tokio::task::spawn_blocking(move || {
            let reply = endpoint::token(&snap, &headers, &body, client_ip, unix_now(), &rid);
            drop(slot);
            reply
        });
        match job.await {
            Ok(r) => r,
            Err(_) => endpoint::OAuthError::server_error().reply(&ctx.request_id),
        }
    }
}

#[async_trait]
impl ProxyHttp for Portcullis {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snap: self.config.load_full(),
            request_id: new_request_id(),
            start: Instant::now(),
            decision: None,
            rejection: None,
            upstream_start: None,
            _in_flight: self.in_flight.enter(),
            endpoint: None,
            client_ip: None,
            client_closed: false,
            client_fault: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer = peer_ip(session);
        let req = session.req_header();
        if let Some(which) = endpoint::which(&ctx.snap, &req.method, req.raw_path()) {
            return self.own_endpoint(session, ctx, which, peer).await;
        }
        // RFC 9112 §3.2: one well-formed Host, required on HTTP/1.1 (SPEC §5 step 2).
        if let Err(rej) = pipeline::sanity::check_host(&req.headers, req.version == http::Version::HTTP_11) {
            respond(session, &rej, &ctx.request_id).await?;
            ctx.rejection = Some(rej);
            return Ok(true);
        }
        let line_target = request_line_target(session);
        let req = session.req_header();
        let view = RequestView {
            method: &req.method,
            target: line_target.as_deref().unwrap_or_else(|| req.raw_path()),
            headers: &req.headers,
            peer,
        };
        let started = Instant::now();
        let decision = pipeline::decide(&ctx.snap, &view, unix_now());
        self.metrics.observe_auth(decision.identity.as_ref().map(|i| i.kind), started.elapsed());
        let denied = decision.result.as_ref().err().cloned();
        ctx.decision = Some(decision);
        match denied {
            None => Ok(false),
            Some(rej) => {
                respond(session, &rej, &ctx.request_id).await?;
                ctx.rejection = Some(rej);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let s = &ctx.snap.settings;
        let mut peer = match &s.upstream_tls {
            None => HttpPeer::new(s.upstream, false, String::new()),
            Some(t) => {
                let mut p = HttpPeer::new(s.upstream, true, t.sni.clone());
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
        let permit: &Permit = match ctx.decision.as_ref().map(|d| &d.result) {
            Some(Ok(p)) => p,
            _ => return Error::e_explain(InternalError, "no permit for a forwarded request"),
        };
        if upstream_request.headers.get(http::header::HOST).is_none() {
            // An HTTP/1.0 request without Host goes out with the upstream's host:port.
            upstream_request.insert_header("host", ctx.snap.settings.upstream.to_string())?;
        }
        let stripped = pipeline::rewrite::rewrite(upstream_request, permit, &ctx.request_id, peer_ip(session))?;
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
            let allowed = matches!(ctx.decision.as_ref().map(|d| &d.result), Some(Ok(p)) if p.upgrade);
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
        upstream_response.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
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
        ctx.rejection = Some(rej);
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
        let path = String::from_utf8_lossy(&raw[..path_end]);
        let d = ctx.decision.as_ref();
        let identity = d.and_then(|d| d.identity.as_ref());
        let shadow = d.and_then(|d| d.shadow_denied.as_ref()).map(|r| r.reason);
        let outcome = match (&ctx.endpoint, &ctx.rejection, d.map(|d| d.result.is_ok())) {
            _ if ctx.client_closed => "client_closed",
            (Some((Which::Token, Ok(_))), _, _) => "token_issued",
            (Some((Which::Token, Err(_))), _, _) => "token_refused",
            (Some(_), _, _) => "served",
            (None, Some(r), _) if r.reason.status() >= 500 => "error",
            (None, Some(_), _) => "denied",
            (None, None, Some(true)) if shadow.is_some() => "shadow_denied",
            (None, None, Some(true)) => "allowed",
            _ => "error",
        };
        let token_client = match &ctx.endpoint {
            Some((Which::Token, Ok(c))) => Some(c.as_str()),
            _ => None,
        };
        let reason = match &ctx.endpoint {
            Some((Which::Token, Err(code))) => Some(*code),
            _ => ctx.rejection.as_ref().map(|r| r.reason).or(shadow).map(|r| r.code()),
        };
        let latency = ctx.start.elapsed();
        telemetry::audit(&AuditRecord {
            request_id: &ctx.request_id,
            client_ip: d.and_then(|d| d.client_ip).or(ctx.client_ip),
            method: req.method.as_str(),
            path: &path,
            route: d.and_then(|d| d.route.as_deref()),
            credential: identity.map(|i| i.credential.as_ref()).or(token_client),
            credential_type: identity.map(|i| i.kind.as_str()).or(token_client.map(|_| "client")),
            user: identity.and_then(|i| i.user.as_deref()),
            outcome,
            reason,
            status,
            latency,
            upstream_latency: ctx.upstream_start.map(|t| t.elapsed()),
        });
        let now = unix_now();
        match &ctx.endpoint {
            Some((Which::Token, Ok(client))) => self.metrics.token_issued(client, now),
            Some((Which::Token, Err(code))) => self.metrics.token_refused(code),
            Some(_) => {}
            None => self.metrics.observe_request(&crate::metrics::RequestObservation {
                route: d.and_then(|d| d.route.as_deref()),
                credential: identity.map(|i| i.credential.as_ref()),
                kind: identity.map(|i| i.kind),
                outcome: crate::metrics::Outcome::from_code(outcome),
                status,
                reason: ctx.rejection.as_ref().map(|r| r.reason).or(shadow),
                duration: latency,
                now,
            }),
        }
    }
}
