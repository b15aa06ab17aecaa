//! The upstream request rewrite (SPEC §5 step 8): strip credentials and every caller-sent
//! identity header, add ours, pass on the trace context, and forward the normalized path
//! that was matched. Takes a [`Permit`], so an unauthorized request cannot reach it.
use std::io::Write;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
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

/// The names we set, parsed once (at compile time) rather than on every request.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_AUTH_CREDENTIAL: HeaderName = HeaderName::from_static("x-auth-credential");
const X_AUTH_CREDENTIAL_TYPE: HeaderName = HeaderName::from_static("x-auth-credential-type");
const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
const X_AUTH_CLIENT_IP: HeaderName = HeaderName::from_static("x-auth-client-ip");
const X_AUTH_REQUEST_ID: HeaderName = HeaderName::from_static("x-auth-request-id");
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub(crate) const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Rewrites `req` for the upstream. When `note` is set, returns the names of caller-sent
/// headers it removed (for a debug line), never their values; otherwise an empty list
/// (nothing allocated for it). Fails closed: if an identity header cannot be set, the
/// request must not be forwarded. The caller's `traceparent` (and `tracestate`) stay as
/// they came; a `trace` started here replaces an invalid one, and drops the `tracestate`
/// that came with it.
///
/// Per request, on the proxy's worker (issue 15): the head is edited as plain
/// [`http::request::Parts`], with room made once for what is added and names parsed at
/// compile time. pingora's own `insert_header` parses the name on every call, keeps a
/// second map of the names as the caller spelled them, and grows both maps (sized to
/// the headers the caller sent) about twice per request: that was two thirds of this
/// function's cost. So the upstream gets header names in canonical case (`Host`,
/// `Content-Type`; others lower-case), as Envoy sends them: HTTP header names are
/// case-insensitive (RFC 9110 §5.1).
pub fn rewrite(
    req: &mut RequestHeader,
    permit: &Permit,
    request_id: &crate::proxy::RequestId,
    peer: IpAddr,
    trace: &TraceContext,
    note: bool,
) -> pingora::Result<Vec<String>> {
    let send_end_stream = req.send_end_stream();
    let raw_target = match &permit.normalized_target {
        Some(_) => None,
        None => verbatim_target(req),
    };
    let mut parts = take_parts(req);
    if let Some(t) = &permit.normalized_target {
        parts.uri = http::Uri::try_from(t.as_str()).map_err(|e| {
            pingora::Error::explain(pingora::ErrorType::InternalError, format!("normalized target: {e}"))
        })?;
    }
    let h = &mut parts.headers;
    let mut stripped = Vec::new();
    let mut strip = |h: &mut HeaderMap, name: &HeaderName| {
        if h.remove(name).is_some() && note {
            stripped.push(name.as_str().to_string());
        }
    };
    // One pass over the names finds which of the headers removed or read below are there
    // at all (issue 15): a request carries few of them, and a lookup hashes the name.
    // Nothing is added to the map before the removals, so what is absent stays absent.
    let mut has = Present::default();
    for name in h.keys() {
        if *name == http::header::CONNECTION {
            has.connection = true;
        } else if *name == http::header::AUTHORIZATION {
            has.authorization = true;
        } else if *name == http::header::UPGRADE {
            has.upgrade = true;
        } else if *name == X_API_KEY {
            has.api_key = true;
        } else if *name == X_FORWARDED_FOR {
            has.forwarded_for = true;
        } else if *name == TRACESTATE {
            has.tracestate = true;
        } else if is_identity_header(name.as_str()) {
            has.identity = true;
        }
    }
    // Hop-by-hop headers the caller named in `Connection` (rare: parsed only when sent).
    let mut upgrade = false;
    if has.connection {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(http::header::CONNECTION).iter() {
            for tok in v.to_str().unwrap_or("").split(',') {
                let t = tok.trim().to_ascii_lowercase();
                if t == "upgrade" {
                    upgrade = true;
                } else if !t.is_empty() && !KEEP.contains(&t.as_str()) {
                    // A token that is no header name names nothing to remove.
                    if let Ok(name) = HeaderName::from_bytes(t.as_bytes()) {
                        named.push(name);
                    }
                }
            }
        }
        for name in named {
            strip(h, &name);
        }
        strip(h, &http::header::CONNECTION);
    }
    // Every spelling of an identity header the caller sent (`x-auth-*`, `x_auth_*`, …):
    // looked for first, listed only when there is one (rare).
    if has.identity {
        let forged: Vec<HeaderName> = h.keys().filter(|n| is_identity_header(n.as_str())).cloned().collect();
        for name in forged {
            strip(h, &name);
        }
    }
    // A name the caller listed in `Connection` may have gone with it: removing it again
    // finds nothing.
    if has.authorization {
        strip(h, &http::header::AUTHORIZATION);
    }
    if has.api_key {
        strip(h, &X_API_KEY);
    }
    // SPEC §5 step 8: an Upgrade only on a `websocket: true` route (after every check);
    // elsewhere it is removed, so the upstream cannot switch protocols under us.
    let upgrade = upgrade && permit.upgrade && has.upgrade && h.contains_key(http::header::UPGRADE);
    if !permit.upgrade && has.upgrade {
        strip(h, &http::header::UPGRADE);
    }
    // Room for exactly what is added below, made once: a map one size too large here is
    // twice the entries to allocate (sized to powers of two).
    let added = 3
        + usize::from(upgrade)
        + permit.identity.as_ref().map_or(0, |id| 2 + usize::from(id.user.is_some()))
        + usize::from(trace.started);
    h.try_reserve(added).map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "too many headers"))?;
    let room_for = h.keys_len() + added;
    if upgrade {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // Every value kept byte for byte (none dropped for not being text), then the peer.
    let peer = peer.to_canonical();
    let peer_text = IpText::of(peer);
    let xff = if has.forwarded_for {
        let mut xff: Vec<u8> = Vec::new();
        for v in h.get_all(&X_FORWARDED_FOR) {
            xff.extend_from_slice(v.as_bytes());
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(peer_text.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)).map_err(bad_value)?
    } else {
        value(peer_text.as_bytes())?
    };
    // Without a trusted proxy in front, the client is the peer and X-Forwarded-For is its
    // text alone: one value serves both headers.
    let client_ip = if permit.client_ip == peer && !has.forwarded_for {
        xff.clone()
    } else {
        value(IpText::of(permit.client_ip).as_bytes())?
    };
    h.insert(X_FORWARDED_FOR, xff);
    if let Some(id) = &permit.identity {
        h.insert(X_AUTH_CREDENTIAL, value(id.credential.as_bytes())?);
        h.insert(X_AUTH_CREDENTIAL_TYPE, HeaderValue::from_static(id.kind.as_str()));
        if let Some(u) = &id.user {
            h.insert(X_AUTH_USER, value(u.as_bytes())?);
        }
    }
    h.insert(X_AUTH_CLIENT_IP, client_ip);
    h.insert(X_AUTH_REQUEST_ID, request_id.header());
    if trace.started {
        if has.tracestate && h.remove(&TRACESTATE).is_some() && note {
            stripped.push("tracestate".into());
        }
        h.insert(TRACEPARENT, trace.header());
    }
    debug_assert!(parts.headers.keys_len() <= room_for, "the rewrite added more headers than it made room for");
    *req = RequestHeader::from(parts);
    if let Some(raw) = raw_target {
        req.set_raw_path(&raw)?;
    }
    if let Some(end) = send_end_stream {
        req.set_send_end_stream(end);
    }
    Ok(stripped)
}

/// The head's request-target when its URI does not reproduce it byte for byte
/// (absolute-form, say): a head rebuilt from [`take_parts`] gets it back with
/// `set_raw_path`.
pub(crate) fn verbatim_target(req: &RequestHeader) -> Option<Vec<u8>> {
    let from_uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
    (req.raw_path() != from_uri.as_bytes()).then(|| req.raw_path().to_vec())
}

/// Takes the head apart into plain [`http::request::Parts`], leaving an empty head in its
/// place: pingora's map of header-name spellings and a verbatim target do not come along
/// ([`verbatim_target`] keeps the latter).
pub(crate) fn take_parts(req: &mut RequestHeader) -> http::request::Parts {
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    std::mem::replace(req, placeholder).into()
}

/// Which of the names [`rewrite`] removes or reads the request has.
#[derive(Default)]
struct Present {
    connection: bool,
    authorization: bool,
    upgrade: bool,
    api_key: bool,
    forwarded_for: bool,
    tracestate: bool,
    /// Some `x-auth-*` spelling.
    identity: bool,
}

/// A header value of this request's, cut from the thread's block of values.
fn value(bytes: &[u8]) -> pingora::Result<HeaderValue> {
    super::values::value(bytes).map_err(bad_value)
}

fn bad_value(e: http::header::InvalidHeaderValue) -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, format!("identity header: {e}"))
}

/// An address as text, formatted on the stack (a header value copies it once; the audit
/// line too).
pub(crate) struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    pub(crate) fn of(ip: IpAddr) -> Self {
        let mut t = IpText { buf: [0; 48], len: 0 };
        if let IpAddr::V4(v4) = ip {
            // The common case, without the formatting machinery (four small numbers).
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    t.buf[t.len] = b'.';
                    t.len += 1;
                }
                if octet >= 100 {
                    t.buf[t.len] = b'0' + octet / 100;
                    t.len += 1;
                }
                if octet >= 10 {
                    t.buf[t.len] = b'0' + octet / 10 % 10;
                    t.len += 1;
                }
                t.buf[t.len] = b'0' + octet % 10;
                t.len += 1;
            }
            return t;
        }
        let mut w = &mut t.buf[..];
        // 48 bytes hold the longest IPv6 text (45).
        let _ = write!(w, "{ip}");
        t.len = 48 - w.len();
        t
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_text() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "192.168.100.255", "255.255.255.255", "9.99.100.199", "::1", "2001:db8::8a2e:370:7334"] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(addr).as_bytes(), addr.to_string().as_bytes(), "{ip}");
        }
    }

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
