//! The pingora [`ProxyHttp`] implementation: each phase a few lines that call the pipeline.
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::{unix_now, Shared, Snapshot};
use crate::pipeline::{self, Decision, Permit, RequestView};
use crate::rejection::{Reason, Rejection};
use crate::telemetry::{self, AuditRecord};

/// The sidecar. Holds only the shared snapshot pointer; everything else is per request.
pub struct Portcullis {
    pub config: Shared,
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

/// Writes a rejection as the whole response.
async fn respond(session: &mut Session, rej: &Rejection, request_id: &str) -> Result<()> {
    let body = rej.body(request_id);
    let resp = rej.response_header(request_id, body.len())?;
    let req = session.req_header();
    // A body we did not read would be taken for the next request: close instead.
    let has_body = req.headers.contains_key(http::header::CONTENT_LENGTH)
        && req.headers.get(http::header::CONTENT_LENGTH).is_some_and(|v| v != "0")
        || req.headers.contains_key(http::header::TRANSFER_ENCODING);
    if has_body || rej.reason == Reason::InvalidRequest {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
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
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let peer = peer_ip(session);
        let req = session.req_header();
        let view = RequestView {
            method: &req.method,
            target: req.raw_path(),
            headers: &req.headers,
            peer,
        };
        let decision = pipeline::decide(&ctx.snap, &view, unix_now());
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
        let mut peer = HttpPeer::new(s.upstream, false, String::new());
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
        let stripped = pipeline::rewrite::rewrite(upstream_request, permit, &ctx.request_id, peer_ip(session));
        if !stripped.is_empty() {
            tracing::debug!(request_id = %ctx.request_id, headers = ?stripped, "removed caller-sent headers");
        }
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
                return FailToProxy { error_code: 0, can_reuse_downstream: false };
            }
            _ if e.esource() == &ErrorSource::Downstream => {
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

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let raw = req.raw_path();
        let path_end = raw.iter().position(|b| *b == b'?').unwrap_or(raw.len());
        let path = String::from_utf8_lossy(&raw[..path_end]);
        let d = ctx.decision.as_ref();
        let identity = d.and_then(|d| d.identity.as_ref());
        let outcome = match (&ctx.rejection, d.map(|d| d.result.is_ok())) {
            (Some(r), _) if r.reason.status() >= 500 => "error",
            (Some(_), _) => "denied",
            (None, Some(true)) => "allowed",
            _ => "error",
        };
        telemetry::audit(&AuditRecord {
            request_id: &ctx.request_id,
            client_ip: d.and_then(|d| d.client_ip),
            method: req.method.as_str(),
            path: &path,
            route: d.and_then(|d| d.route.as_deref()),
            credential: identity.map(|i| i.credential.as_ref()),
            credential_type: identity.map(|i| i.kind.as_str()),
            user: identity.and_then(|i| i.user.as_deref()),
            outcome,
            reason: ctx.rejection.as_ref().map(|r| r.reason.code()),
            status,
            latency: ctx.start.elapsed(),
            upstream_latency: ctx.upstream_start.map(|t| t.elapsed()),
        });
    }
}
