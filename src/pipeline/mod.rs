//! The decision for one request, as plain functions over plain inputs:
//! sanity → route → credential → authentication → allowlist → permission → [`Permit`].
pub mod authn;
pub mod client_ip;
pub mod rewrite;
pub mod sanity;
pub mod trace;
pub mod values;

use std::net::IpAddr;
use std::sync::Arc;

pub use authn::Identity;
use http::{HeaderMap, Method};

use crate::config::{Mode, Snapshot};
use crate::permission::any_grants;
use crate::rejection::{Reason, Rejection};

/// Proof that a request may be forwarded; only [`decide`] makes one.
// Sealed by a private field rather than `#[non_exhaustive]`, which would still let any
// module of this crate build one.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug, Clone)]
pub struct Permit {
    /// The route template (`None` never happens for a forwarded request today, but the
    /// rewrite does not depend on it).
    pub route: Option<Arc<str>>,
    /// `None` for a public route.
    pub identity: Option<Identity>,
    pub client_ip: IpAddr,
    /// The route allows an `Upgrade` (`websocket: true`); otherwise it is removed.
    pub upgrade: bool,
    /// The request-target to forward when sanity normalized the path (percent-encoded
    /// unreserved characters decoded), so the upstream serves the path that was matched;
    /// `None`: forward the target as received.
    pub normalized_target: Option<String>,
    _sealed: (),
}

/// The request as the pipeline sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The raw request-target, exactly as received (on HTTP/1 the request line's bytes,
    /// fragment, spaces and control bytes included, so sanity can refuse them).
    pub target: &'a [u8],
    pub headers: &'a HeaderMap,
    /// The TCP peer.
    pub peer: IpAddr,
    /// `target`'s path as [`sanity::check_target`] returned it, when the caller already
    /// checked it (the proxy does, to find its own endpoints): not checked twice.
    pub checked_path: Option<&'a std::borrow::Cow<'a, str>>,
}

/// What was decided, and what was learned on the way (for the audit log and metrics).
#[derive(Debug, Clone)]
pub struct Decision {
    pub result: Result<Permit, Rejection>,
    pub route: Option<Arc<str>>,
    pub client_ip: Option<IpAddr>,
    pub identity: Option<Identity>,
    /// In shadow mode: the denial that was not enforced (the request is forwarded).
    pub shadow_denied: Option<Rejection>,
    /// The matched route's mode, if it sets one.
    route_mode: Option<Mode>,
    /// The matched route has `websocket: true` (set by `decide_enforced`, like `route_mode`).
    route_websocket: bool,
    /// The normalized target, when it differs from the raw one (set by `decide_enforced`).
    normalized_target: Option<String>,
}

impl Decision {
    fn deny(rej: Rejection, route: Option<Arc<str>>, client_ip: Option<IpAddr>, identity: Option<Identity>) -> Self {
        Decision {
            result: Err(rej),
            route,
            client_ip,
            identity,
            shadow_denied: None,
            route_mode: None,
            route_websocket: false,
            normalized_target: None,
        }
    }
}

/// Decides one request against one snapshot at `now` (unix seconds), in SPEC §5 order.
///
/// In shadow mode (global, or the matched route's), a denial by authentication, address,
/// route or permission becomes a [`Permit`] and is reported in `shadow_denied`; a
/// malformed request (400) or a `CONNECT` (405) is refused in every mode.
pub fn decide(snap: &Snapshot, req: &RequestView<'_>, now: i64) -> Decision {
    let mut d = decide_enforced(snap, req, now);
    let mode = d.route_mode.unwrap_or(snap.settings.mode);
    if mode == Mode::Shadow {
        if let Err(rej) = &d.result {
            if !matches!(rej.reason, Reason::InvalidRequest | Reason::MethodNotAllowed) {
                if let Some(client_ip) = d.client_ip {
                    let permit = Permit {
                        route: d.route.clone(),
                        identity: d.identity.clone(),
                        client_ip,
                        upgrade: d.route_websocket,
                        normalized_target: None,
                        _sealed: (),
                    };
                    d.shadow_denied = Some(rej.clone());
                    d.result = Ok(permit);
                }
            }
        }
    }
    if let Ok(p) = &mut d.result {
        p.normalized_target = d.normalized_target.take();
    }
    d
}

fn decide_enforced(snap: &Snapshot, req: &RequestView<'_>, now: i64) -> Decision {
    if req.method == Method::CONNECT {
        let r = Rejection::new(Reason::MethodNotAllowed, "CONNECT is not allowed: this proxy opens no tunnels");
        return Decision::deny(r, None, None, None);
    }
    let path = match req.checked_path {
        Some(p) => p.clone(),
        None => match sanity::check_target(req.target) {
            Ok(p) => p,
            Err(r) => return Decision::deny(r, None, None, None),
        },
    };
    let presented = match sanity::check_headers(req.headers) {
        Ok(p) => p,
        Err(r) => return Decision::deny(r, None, None, None),
    };
    // `X-Forwarded-For` is read only from a trusted proxy: looked up only then.
    let client_ip = if snap.settings.is_trusted_proxy(req.peer.to_canonical()) {
        let xff = req.headers.get_all(rewrite::X_FORWARDED_FOR).iter().map(|v| v.as_bytes());
        client_ip::client_ip(req.peer, xff, &snap.settings)
    } else {
        req.peer.to_canonical()
    };
    let matched = snap.routes.lookup(req.method, &path);
    let route_id = matched.as_ref().map(|m| m.route.id.clone());
    let route_mode = matched.as_ref().and_then(|m| m.route.mode);
    let route_websocket = matched.as_ref().is_some_and(|m| m.route.websocket);
    let mut d = decide_matched(snap, req, now, &path, presented, client_ip, matched, route_id);
    d.route_mode = route_mode;
    d.route_websocket = route_websocket;
    if let std::borrow::Cow::Owned(p) = path {
        let query = req.target.iter().position(|b| *b == b'?').map_or(&b""[..], |i| &req.target[i..]);
        // The target is visible ASCII (sanity checked it), so the query is text.
        d.normalized_target = Some(p + &String::from_utf8_lossy(query));
    }
    d
}

#[allow(clippy::too_many_arguments)]
fn decide_matched(
    snap: &Snapshot,
    req: &RequestView<'_>,
    now: i64,
    path: &str,
    presented: sanity::Presented<'_>,
    client_ip: IpAddr,
    matched: Option<crate::config::RouteMatch<'_>>,
    route_id: Option<Arc<str>>,
) -> Decision {
    if let Some(m) = &matched {
        if m.route.public {
            return Decision {
                result: Ok(Permit {
                    route: route_id.clone(),
                    identity: None,
                    client_ip,
                    upgrade: m.route.websocket,
                    normalized_target: None,
                    _sealed: (),
                }),
                route: route_id,
                client_ip: Some(client_ip),
                identity: None,
                shadow_denied: None,
                route_mode: None,
                route_websocket: false,
                normalized_target: None,
            };
        }
    }
    let identity = match authn::authenticate(snap, presented, now) {
        Ok(i) => i,
        Err(r) => return Decision::deny(r, route_id, Some(client_ip), None),
    };
    if !identity.allows_ip(client_ip) {
        let r = Rejection::new(
            Reason::IpNotAllowed,
            format!("credential {:?} may not be used from {client_ip}", identity.credential),
        );
        return Decision::deny(r, route_id, Some(client_ip), Some(identity));
    }
    let Some(m) = matched else {
        let r = Rejection::new(Reason::RouteNotAllowed, format!("no route for {} {path}", req.method));
        return Decision::deny(r, None, Some(client_ip), Some(identity));
    };
    if let Some(need) = &m.route.require {
        if !any_grants(&identity.grants, need, &m.target()) {
            let r = Rejection::new(
                Reason::InsufficientScope,
                format!("credential {:?} lacks {need} for this route", identity.credential),
            );
            return Decision::deny(r, route_id, Some(client_ip), Some(identity));
        }
    }
    Decision {
        result: Ok(Permit {
            route: route_id.clone(),
            identity: Some(identity.clone()),
            client_ip,
            upgrade: m.route.websocket,
            normalized_target: None,
            _sealed: (),
        }),
        route: route_id,
        client_ip: Some(client_ip),
        identity: Some(identity),
        shadow_denied: None,
        route_mode: None,
        route_websocket: false,
        normalized_target: None,
    }
}

#[cfg(test)]
mod tests;
