//! The upstream request rewrite (SPEC §5 step 8): strip credentials and every caller-sent
//! identity header, add ours, pass on the trace context, and forward the normalized path
//! that was matched. Takes a [`Permit`], so an unauthorized request cannot reach it.
use std::io::Write;
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

/// Rewrites `req` for the upstream. When `note` is set, returns the names of caller-sent
/// headers it removed (for a debug line), never their values; otherwise an empty list
/// (nothing allocated for it). Fails closed: if an identity header cannot be set, the
/// request must not be forwarded. The caller's `traceparent` (and `tracestate`) stay as
/// they came; a `trace` started here replaces an invalid one, and drops the `tracestate`
/// that came with it.
///
/// Per request, on the proxy's worker: a header is removed only when present, names are
/// static, and the request id's value is shared, not copied (issue 15).
pub fn rewrite(
    req: &mut RequestHeader,
    permit: &Permit,
    request_id: &crate::proxy::RequestId,
    peer: IpAddr,
    trace: &TraceContext,
    note: bool,
) -> pingora::Result<Vec<String>> {
    if let Some(t) = &permit.normalized_target {
        let uri = http::Uri::try_from(t.as_str()).map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::InternalError, format!("normalized target: {e}"))
        })?;
        req.set_uri(uri);
    }
    let mut stripped = Vec::new();
    let mut strip = |req: &mut RequestHeader, name: &str| {
        if req.remove_header(name).is_some() && note {
            stripped.push(name.to_string());
        }
    };
    // Hop-by-hop headers the caller named in `Connection` (rare: parsed only when sent).
    let mut upgrade = false;
    if req.headers.contains_key(http::header::CONNECTION) {
        let mut named: Vec<String> = Vec::new();
        for v in req.headers.get_all(http::header::CONNECTION).iter() {
            for tok in v.to_str().unwrap_or("").split(',') {
                let t = tok.trim().to_ascii_lowercase();
                if t == "upgrade" {
                    upgrade = true;
                } else if !t.is_empty() && !KEEP.contains(&t.as_str()) {
                    named.push(t);
                }
            }
        }
        for name in named {
            strip(req, &name);
        }
        strip(req, "connection");
    }
    // Every spelling of an identity header the caller sent (`x-auth-*`, `x_auth_*`, …).
    let forged: Vec<String> = req.headers.keys().map(|n| n.as_str()).filter(|n| is_identity_header(n)).map(str::to_string).collect();
    for name in forged {
        strip(req, &name);
    }
    strip(req, "authorization");
    strip(req, "x-api-key");
    // SPEC §5 step 8: an Upgrade only on a `websocket: true` route (after every check);
    // elsewhere it is removed, so the upstream cannot switch protocols under us.
    let upgrade = upgrade && permit.upgrade && req.headers.contains_key(http::header::UPGRADE);
    if !permit.upgrade {
        strip(req, "upgrade");
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
    xff.extend_from_slice(IpText::of(peer.to_canonical()).as_bytes());
    req.insert_header("x-forwarded-for", xff)?;
    if let Some(id) = &permit.identity {
        req.insert_header("x-auth-credential", id.credential.as_ref())?;
        req.insert_header("x-auth-credential-type", http::HeaderValue::from_static(id.kind.as_str()))?;
        if let Some(u) = &id.user {
            req.insert_header("x-auth-user", u.as_ref())?;
        }
    }
    req.insert_header("x-auth-client-ip", IpText::of(permit.client_ip).as_bytes())?;
    req.insert_header("x-auth-request-id", request_id.header())?;
    if trace.started {
        if req.remove_header("tracestate").is_some() && note {
            stripped.push("tracestate".into());
        }
        req.insert_header("traceparent", trace.header())?;
    }
    Ok(stripped)
}

/// An address as text, formatted on the stack (a header value copies it once).
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut t = IpText { buf: [0; 48], len: 0 };
        let mut w = &mut t.buf[..];
        // 48 bytes hold the longest IPv6 text (45).
        let _ = write!(w, "{ip}");
        t.len = 48 - w.len();
        t
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
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
        let rid = crate::proxy::RequestId::new();
        let stripped = rewrite(&mut req, &permit, &rid, "127.0.0.1".parse().unwrap(), &trace, true).unwrap();
        for gone in ["x-api-key", "x_auth_user", "x.auth.thing", "x-auth-credential", "x-hop", "connection"] {
            assert!(stripped.iter().any(|s| s == gone), "{gone} in {stripped:?}");
        }
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
        assert_eq!(h.get("x-auth-request-id").unwrap(), rid.as_str());
        assert_eq!(h.get("traceparent").unwrap(), tp, "the caller's trace context is passed on unchanged");
    }
}
