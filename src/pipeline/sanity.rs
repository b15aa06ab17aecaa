//! Request sanity (SPEC §5 step 2): the target and the headers, before anything else.
//! The path is checked, then normalized once (percent-encoded unreserved characters
//! decoded, RFC 3986 §6.2.2.2); that normalized path is both matched and forwarded.
use std::borrow::Cow;

use http::HeaderMap;

use crate::rejection::{Reason, Rejection};

fn bad(msg: &str) -> Rejection {
    Rejection::new(Reason::InvalidRequest, msg)
}

fn hexval(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §2.3 unreserved, less `.`: an encoded dot is refused, not decoded.
fn decodes(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~'
}

/// Checks a request-target and returns its normalized path (without the query).
///
/// Rejected: anything but origin-form; raw bytes outside visible ASCII; `#`; a backslash;
/// dot segments and empty segments; bad percent-escapes; encoded `/`, `\`, `.` and NUL.
/// Percent-encoded `A–Z a–z 0–9 - _ ~` are decoded (`/v1/%76aults` is `/v1/vaults`), so
/// the route matched is the one the upstream serves; the result borrows when nothing was.
pub fn check_target(target: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    match plain_path(target) {
        Some(path) => Ok(Cow::Borrowed(path)),
        None => check_target_whole(target),
    }
}

/// The path of an ordinary target, found in one pass (issue 15: the checks of
/// [`check_target_whole`] are one pass each): visible ASCII without `#`, no `%` or `\` in
/// the path, no dot segment, no empty segment but a trailing one. `None` for anything else,
/// which [`check_target_whole`] then judges (and refuses, or decodes).
fn plain_path(target: &[u8]) -> Option<&str> {
    if target.first() != Some(&b'/') {
        return None;
    }
    let mut segment = 1;
    let mut path_end = target.len();
    for (i, &b) in target.iter().enumerate().skip(1) {
        match b {
            b'/' => {
                let seg = &target[segment..i];
                if seg.is_empty() || seg == b"." || seg == b".." {
                    return None;
                }
                segment = i + 1;
            }
            b'?' => {
                path_end = i;
                break;
            }
            b'%' | b'#' | b'\\' => return None,
            _ if !b.is_ascii_graphic() => return None,
            _ => {}
        }
    }
    let last = &target[segment..path_end];
    if last == b"." || last == b".." {
        return None;
    }
    if target[path_end..].iter().any(|b| *b == b'#' || !b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(&target[..path_end]).ok()
}

/// [`check_target`], every check in turn: the first that fails names the refusal.
fn check_target_whole(target: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    if target.first() != Some(&b'/') {
        return Err(bad("the request target must be a path (origin-form)"));
    }
    if let Some(b) = target.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(if *b == b' ' || b.is_ascii_control() {
            bad("the request target contains a control character or space")
        } else {
            bad("the request target contains a non-ASCII byte")
        });
    }
    if target.contains(&b'#') {
        return Err(bad("the request target contains a fragment"));
    }
    let path_end = target.iter().position(|b| *b == b'?').unwrap_or(target.len());
    let path = &target[..path_end];
    if path.contains(&b'\\') {
        return Err(bad("the path contains a backslash"));
    }
    let mut i = 0;
    let mut decoded = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let (Some(h), Some(l)) = (
                path.get(i + 1).copied().and_then(hexval),
                path.get(i + 2).copied().and_then(hexval),
            ) else {
                return Err(bad("the path has a malformed percent-escape"));
            };
            match h * 16 + l {
                0 => return Err(bad("the path contains an encoded NUL")),
                b'/' => return Err(bad("the path contains an encoded slash")),
                b'\\' => return Err(bad("the path contains an encoded backslash")),
                b'.' => return Err(bad("the path contains an encoded dot")),
                c if decodes(c) => decoded += 1,
                _ => {}
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    // Segments after the leading '/'. A trailing '/' is allowed; '//' anywhere is not.
    let rest = &path[1..];
    let mut segs = rest.split(|b| *b == b'/').peekable();
    while let Some(seg) = segs.next() {
        if seg == b"." || seg == b".." {
            return Err(bad("the path contains a dot segment"));
        }
        if seg.is_empty() && segs.peek().is_some() {
            return Err(bad("the path contains an empty segment"));
        }
    }
    // All bytes are visible ASCII, so this cannot fail.
    let path = std::str::from_utf8(path).map_err(|_| bad("the path is not valid"))?;
    if decoded == 0 {
        return Ok(Cow::Borrowed(path));
    }
    // Decoding an unreserved character cannot make a separator, a dot or a new escape,
    // so the checks above hold for the decoded path too.
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let c = (hexval(b[i + 1]).unwrap_or(0) << 4) | hexval(b[i + 2]).unwrap_or(0);
            if decodes(c) {
                out.push(char::from(c));
            } else {
                out.push_str(&path[i..i + 3]);
            }
            i += 3;
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

/// Checks `Host` (RFC 9112 §3.2): exactly one on HTTP/1.1, at most one otherwise, and
/// only `host[:port]` (a name, an IPv4 address or a bracketed IPv6 address).
pub fn check_host(headers: &HeaderMap, required: bool) -> Result<(), Rejection> {
    let mut values = headers.get_all(http::header::HOST).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(bad("more than one Host header"));
    }
    let Some(v) = first else {
        return if required { Err(bad("the Host header is required")) } else { Ok(()) };
    };
    if valid_host(v.as_bytes()) {
        Ok(())
    } else {
        Err(bad("the Host header must be host[:port]"))
    }
}

fn valid_host(v: &[u8]) -> bool {
    // What follows the host: nothing, or `:port`.
    let port = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|b| *b == b']') else { return false };
        let inner = &v[1..end];
        if inner.is_empty() || !inner.iter().all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.') {
            return false;
        }
        &v[end + 1..]
    } else {
        let end = v.iter().position(|b| *b == b':').unwrap_or(v.len());
        let host = &v[..end];
        if host.is_empty() || !host.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')) {
            return false;
        }
        &v[end..]
    };
    match port {
        [] => true,
        [b':', digits @ ..] => !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Headers that ask a server to treat a request as another method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] =
    ["x-http-method-override", "x-http-method", "x-method-override"];

/// Whether a (lower-case) header name is a method override once `_` and `.` read as `-`.
fn is_method_override(name: &str) -> bool {
    METHOD_OVERRIDE_HEADERS.iter().any(|h| {
        h.len() == name.len()
            && h.bytes().zip(name.bytes()).all(|(a, b)| a == if b == b'_' || b == b'.' { b'-' } else { b })
    })
}

/// A credential as presented, not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    None,
    Bearer(&'a str),
    ApiKey(&'a str),
    /// An `Authorization` header of another scheme, or not valid text.
    BadAuthorization,
    /// An `x-api-key` that is not valid text.
    BadApiKey,
}

/// Checks the headers and extracts the presented credential: at most one `Authorization`
/// or `x-api-key`, never both, no method-override headers.
pub fn check_headers(headers: &HeaderMap) -> Result<Presented<'_>, Rejection> {
    // Also `X_HTTP_Method_Override` and `x.http.method.override`: CGI-style servers read
    // `_` (and some `.`) as `-`, as the identity-header stripping assumes too.
    // One pass over the names and values (issue 15), not a hashed lookup per name.
    let (mut override_sent, mut a1, mut a2, mut k1, mut k2) = (false, None, false, None, false);
    for (name, value) in headers {
        if *name == http::header::AUTHORIZATION {
            a2 |= a1.is_some();
            a1 = a1.or(Some(value));
        } else if *name == super::rewrite::X_API_KEY {
            k2 |= k1.is_some();
            k1 = k1.or(Some(value));
        } else if is_method_override(name.as_str()) {
            override_sent = true;
        }
    }
    if override_sent {
        return Err(bad("method-override headers are not accepted"));
    }
    if a2 {
        return Err(bad("more than one Authorization header"));
    }
    if k2 {
        return Err(bad("more than one x-api-key header"));
    }
    match (a1, k1) {
        (Some(_), Some(_)) => Err(bad("send either Authorization or x-api-key, not both")),
        (None, None) => Ok(Presented::None),
        (None, Some(k)) => Ok(match k.to_str() {
            Ok(s) if !s.trim().is_empty() => Presented::ApiKey(s.trim()),
            _ => Presented::BadApiKey,
        }),
        (Some(a), None) => Ok(match a.to_str() {
            Ok(s) => match s.trim().split_once(' ') {
                Some((scheme, tok)) if scheme.eq_ignore_ascii_case("bearer") && !tok.trim().is_empty() => {
                    Presented::Bearer(tok.trim())
                }
                _ => Presented::BadAuthorization,
            },
            Err(_) => Presented::BadAuthorization,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn allows_ordinary_targets() {
        for t in ["/", "/v1/vaults/v-1/balances", "/v1/x/", "/v1/a%20b?x=../y", "/a.b/c..d/.e", "/v1?q=%2F"] {
            assert!(check_target(t.as_bytes()).is_ok(), "{t}");
        }
        assert_eq!(check_target(b"/v1/x?q=1").unwrap(), "/v1/x");
    }

    #[test]
    fn decodes_unreserved_and_keeps_the_rest() {
        for (t, want) in [
            ("/v1/%76aults/v-1/balances", "/v1/vaults/v-1/balances"),
            ("/v1/%56%41ULTS/%7e%5F%2D%30", "/v1/VAULTS/~_-0"),
            ("/v1/a%20b%3Ac?q=%76", "/v1/a%20b%3Ac"),
        ] {
            let got = check_target(t.as_bytes()).unwrap();
            assert_eq!(got, want, "{t}");
        }
        assert!(matches!(check_target(b"/v1/vaults").unwrap(), Cow::Borrowed(_)));
        // Decoding never makes a dot segment: an encoded dot is refused before it.
        assert!(check_target(b"/v1/%2e%76").is_err());
    }

    #[test]
    fn denies_attack_targets() {
        for t in [
            "/v1/./x", "/v1/../x", "/..", "/.", "/v1/%2e%2e/x", "/v1/%2E/x", "/v1/.%2e/x",
            "//v1/x", "/v1//x", "/v1/a%2fb", "/v1/a%2Fb", "/v1/a%5cb", "/v1/a\\b",
            "/v1/a%00b", "/v1/a%zzb", "/v1/a%4", "/v1/a%", "http://evil.example/v1", "*",
            "", "v1/x", "/v1/a#b", "/v1/\x01",
        ] {
            let e = check_target(t.as_bytes()).unwrap_err();
            assert_eq!(e.reason, Reason::InvalidRequest, "{t}");
        }
        assert!(check_target(b"/caf\xc3\xa9").is_err());
    }

    fn hm(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn allows_well_formed_hosts() {
        for h in ["api", "api.example:8080", "127.0.0.1", "[::1]:443", "a-b.c_d"] {
            assert!(check_host(&hm(&[("host", h)]), true).is_ok(), "{h}");
        }
        assert!(check_host(&hm(&[]), false).is_ok(), "HTTP/1.0 without Host");
    }

    #[test]
    fn denies_bad_hosts() {
        for h in ["evil.example/v1/x", "a b", "", "x:", "x:123456", "x:8o", "user@x", "[::1", "[zz]"] {
            assert!(check_host(&hm(&[("host", h)]), true).is_err(), "{h}");
        }
        assert!(check_host(&hm(&[]), true).is_err(), "HTTP/1.1 without Host");
        assert!(check_host(&hm(&[("host", "a"), ("host", "b")]), false).is_err());
    }

    #[test]
    fn extracts_credentials() {
        assert_eq!(check_headers(&hm(&[])).unwrap(), Presented::None);
        assert_eq!(check_headers(&hm(&[("x-api-key", "k")])).unwrap(), Presented::ApiKey("k"));
        assert_eq!(check_headers(&hm(&[("authorization", "bearer t")])).unwrap(), Presented::Bearer("t"));
        assert_eq!(check_headers(&hm(&[("authorization", "Basic x")])).unwrap(), Presented::BadAuthorization);
        assert_eq!(check_headers(&hm(&[("authorization", "Bearer")])).unwrap(), Presented::BadAuthorization);
    }

    #[test]
    fn denies_ambiguous_credentials() {
        for h in [
            hm(&[("x-api-key", "a"), ("x-api-key", "b")]),
            hm(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            hm(&[("authorization", "Bearer a"), ("x-api-key", "b")]),
            hm(&[("x-http-method-override", "DELETE")]),
            hm(&[("X-HTTP-Method", "DELETE")]),
            hm(&[("x-method-override", "DELETE")]),
            hm(&[("x_http_method_override", "DELETE")]),
            hm(&[("x.http.method", "DELETE")]),
            hm(&[("X_Method_Override", "DELETE")]),
        ] {
            assert!(check_headers(&h).is_err(), "{h:?}");
        }
    }

    #[test]
    fn ordinary_targets_take_the_one_pass_path() {
        for t in ["/", "/v1/vaults/v-1/balances", "/v1/x/", "/v1?q=%2F#", "/a.b/c..d/.e?x=../y\\z"] {
            let fast = plain_path(t.as_bytes());
            if t.contains('#') {
                assert_eq!(fast, None, "{t}");
            } else {
                assert_eq!(fast, Some(t.split('?').next().unwrap()), "{t}");
            }
        }
        for t in ["v1", "/v1//x", "/v1/./x", "/v1/..", "/v1/%76", "/a\\b", "/a b", "/a\u{7f}", "/é"] {
            assert_eq!(plain_path(t.as_bytes()), None, "{t}");
        }
    }

    proptest! {
        /// The one-pass path answers only what the whole check answers the same way.
        #[test]
        fn the_one_pass_path_agrees_with_every_check(s in "[/a-zA-Z0-9%.?#\\\\ _~\u{7f}é-]{0,24}") {
            if let Some(p) = plain_path(s.as_bytes()) {
                prop_assert_eq!(check_target_whole(s.as_bytes()).ok(), Some(Cow::Borrowed(p)));
            } else if let Ok(Cow::Borrowed(p)) = check_target_whole(s.as_bytes()) {
                // Only a path with a (kept) escape is left to the whole check.
                prop_assert!(p.contains('%'), "{:?} passes but not in one pass", s);
            }
        }

        /// Whatever passes has no dot segment, empty segment, encoded separator or encoded
        /// unreserved character, and normalizing it again changes nothing.
        #[test]
        fn accepted_paths_are_clean(s in "/[a-zA-Z0-9%./\\\\_~-]{0,24}") {
            if let Ok(p) = check_target(s.as_bytes()) {
                prop_assert_eq!(check_target(p.as_bytes()).unwrap(), p.clone());
                for (i, _) in p.match_indices('%') {
                    let c = u8::from_str_radix(&p[i + 1..i + 3], 16).unwrap();
                    prop_assert!(!decodes(c), "{} left {}", s, &p[i..i + 3]);
                }
                let lower = p.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2e") && !lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"));
                prop_assert!(!p.contains("//") && !p.contains('\\'));
                for seg in p.split('/') {
                    prop_assert!(seg != "." && seg != "..");
                }
            }
        }
    }
}
