//! The upstream request rewrite (SPEC §5 step 8): strip credentials and every caller-sent
//! identity header, add ours, pass on the trace context, and forward the normalized path
//! that was matched. Takes a [`Permit`], so an unauthorized request cannot reach it.
use std::net::IpAddr;

use pingora::http::RequestHeader;

use super::trace::TraceContext;
use super::Permit;

/// Whether `name` (lower-case) is an identity header once `_` and `.` read as `-`.
pub fn is_identity_header(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 7
        && b[..7]
            .iter()
            .map(|c| match c.to_ascii_lowercase() {
                b'_' | b'.' => b'-',
                other => other,
            })
            .eq(b"x-auth-".iter().copied())
}

/// Headers a caller may never make us drop by naming them in `Connection`.
const KEEP: [&str; 3] = ["host", "content-length", "transfer-encoding"];

/// Rewrites `req` for the upstream. Returns the names of caller-sent headers it removed
/// (for a debug note), never their values. Fails closed: if an identity header cannot be
/// set, the request must not be forwarded. The caller's `traceparent` (and `tracestate`)
/// stay as they came; a `trace` started here replaces an invalid one, and drops the
/// `tracestate` that came with it.
pub fn rewrite(
    req: &mut RequestHeader,
    permit: &Permit,
    request_id: &str,
    peer: IpAddr,
    trace: &TraceContext,
) -> pingora::Result<Vec<String>> {
    if let Some(t) = &permit.normalized_target {
        let uri = http::Uri::try_from(t.as_str()).map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::InternalError, format!("normalized target: {e}"))
        })?;
        req.set_uri(uri);
    }
    let mut remove: Vec<String> = Vec::new();
    let mut upgrade = false;
    for v in req.headers.get_all(http::header::CONNECTION).iter() {
        for tok in v.to_str().unwrap_or("").split(',') {
            let t = tok.trim().to_ascii_lowercase();
            if t == "upgrade" {
                upgrade = true;
            } else if !t.is_empty() && !KEEP.contains(&t.as_str()) {
                remove.push(t);
            }
        }
    }
    for name in req.headers.keys() {
        let n = name.as_str();
        if is_identity_header(n) {
            remove.push(n.to_string());
        }
    }
    remove.push("authorization".into());
    remove.push("x-api-key".into());
    remove.push("connection".into());
    // SPEC §5 step 8: an Upgrade only on a `websocket: true` route (after every check);
    // elsewhere it is removed, so the upstream cannot switch protocols under us.
    let upgrade = upgrade && permit.upgrade && req.headers.contains_key(http::header::UPGRADE);
    if !permit.upgrade {
        remove.push("upgrade".into());
    }
    let mut stripped = Vec::new();
    for name in remove {
        if req.remove_header(name.as_str()).is_some() {
            stripped.push(name);
        }
    }
    if upgrade {
        let _ = req.insert_header("connection", "upgrade");
    }
    // Every value kept byte for byte (none dropped for not being text), then the peer.
    let mut xff: Vec<u8> = Vec::new();
    for v in req.headers.get_all("x-forwarded-for").iter() {
        xff.extend_from_slice(v.as_bytes());
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(peer.to_canonical().to_string().as_bytes());
    req.insert_header("x-forwarded-for", xff)?;
    if let Some(id) = &permit.identity {
        req.insert_header("x-auth-credential", id.credential.as_ref())?;
        req.insert_header("x-auth-credential-type", id.kind.as_str())?;
        if let Some(u) = &id.user {
            req.insert_header("x-auth-user", u.as_ref())?;
        }
    }
    req.insert_header("x-auth-client-ip", permit.client_ip.to_string())?;
    req.insert_header("x-auth-request-id", request_id)?;
    if trace.started {
        if req.remove_header("tracestate").is_some() {
            stripped.push("tracestate".into());
        }
        req.insert_header("traceparent", trace.header())?;
    }
    Ok(stripped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_spellings() {
        for n in ["x-auth-user", "x_auth_user", "x.auth.user", "X-Auth-Credential", "x-auth-"] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["x-authorization", "x-auth", "authorization", "x-api-key", "xauth-user"] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn strips_and_adds() {
        let mut req = RequestHeader::build("GET", b"/v1/x", None).unwrap();
        for (k, v) in [
            ("x-api-key", "secret"),
            ("x-auth-credential", "forged"),
            ("x_auth_user", "forged"),
            ("x.auth.thing", "forged"),
            ("connection", "x-hop, keep-alive, host"),
            ("x-hop", "1"),
            ("x-forwarded-for", "203.0.113.1"),
            ("host", "api"),
        ] {
            req.append_header(k, v).unwrap();
        }
        let permit = Permit {
            route: None,
            identity: Some(super::super::authn::Identity {
                credential: "k".into(),
                kind: crate::config::CredentialKind::ApiKey,
                user: Some("alice".into()),
                grants: std::sync::Arc::from(vec![]),
                allowed_ips: None,
            }),
            client_ip: "198.51.100.2".parse().unwrap(),
            upgrade: false,
            normalized_target: None,
            _sealed: (),
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        req.append_header("traceparent", tp).unwrap();
        let trace = super::super::trace::parse(tp.as_bytes()).unwrap();
        rewrite(&mut req, &permit, "rid", "127.0.0.1".parse().unwrap(), &trace).unwrap();
        let h = &req.headers;
        assert!(h.get("x-api-key").is_none());
        assert!(h.get("x_auth_user").is_none());
        assert!(h.get("x.auth.thing").is_none());
        assert!(h.get("x-hop").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("host").unwrap(), "api");
        assert_eq!(h.get("x-auth-credential").unwrap(), "k");
        assert_eq!(h.get("x-auth-user").unwrap(), "alice");
        assert_eq!(h.get("x-auth-client-ip").unwrap(), "198.51.100.2");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "203.0.113.1, 127.0.0.1");
        assert_eq!(h.get("traceparent").unwrap(), tp, "the caller's trace context is passed on unchanged");
    }
}
