//! Request sanity: `check_target` on raw bytes, `check_headers` and `check_host` on a
//! HeaderMap built from the same input.
//!
//! Input: the request-target, then `\n`, then header lines `name:value` separated by
//! `\n` (lines `http` refuses are skipped).
#![no_main]
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::pipeline::sanity::{check_headers, check_host, Presented};

fn hexval(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The documented rules, checked on the input of an accepted target.
fn assert_clean(target: &[u8]) {
    assert_eq!(target.first(), Some(&b'/'), "accepted a target not in origin-form");
    assert!(target.iter().all(u8::is_ascii_graphic), "accepted a control, space or non-ASCII byte");
    assert!(!target.contains(&b'#'), "accepted a fragment");
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    assert!(!path.contains(&b'\\'), "accepted a backslash");
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%' {
            let h = path.get(i + 1).copied().and_then(hexval).expect("accepted a malformed escape");
            let l = path.get(i + 2).copied().and_then(hexval).expect("accepted a malformed escape");
            let c = h * 16 + l;
            assert!(!matches!(c, 0 | b'/' | b'\\' | b'.'), "accepted an encoded NUL, slash, backslash or dot");
            i += 3;
        } else {
            i += 1;
        }
    }
    let segs: Vec<&[u8]> = path[1..].split(|b| *b == b'/').collect();
    for (n, s) in segs.iter().enumerate() {
        assert!(*s != b"." && *s != b"..", "accepted a dot segment");
        assert!(!s.is_empty() || n + 1 == segs.len(), "accepted an empty segment");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    if let Ok(p) = portcullis::pipeline::sanity::check_target(target) {
        // Agnostic to `&str` vs `Cow<str>`.
        let p: &str = p.as_ref();
        assert!(p.starts_with('/'));
        assert_clean(target);
    }
    // The whole input as a target too (newlines and all).
    let _ = portcullis::pipeline::sanity::check_target(data);

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    match check_headers(&headers) {
        Ok(Presented::Bearer(t)) | Ok(Presented::ApiKey(t)) => {
            assert!(!t.is_empty() && t.trim() == t, "credential {t:?} is empty or untrimmed");
        }
        _ => {}
    }
    let required = check_host(&headers, true);
    let optional = check_host(&headers, false);
    if required.is_ok() {
        assert!(optional.is_ok());
    }
});
