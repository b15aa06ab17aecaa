//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the caller's `traceparent`
//! is forwarded to the upstream unchanged, and one is started when it is absent or
//! invalid; its trace id goes into the audit line, so a denial can be found from the
//! API's own traces. Parsed by hand, without allocating: this runs on every request.
use std::cell::RefCell;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// The trace context of one request: the caller's, or one started here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// The parent (span) id, 8 bytes, never all zero.
    pub parent_id: [u8; 8],
    pub flags: u8,
    /// Started here (the caller sent none that was valid): the upstream gets [`Self::header`],
    /// and any `tracestate` of the caller's is dropped with its invalid parent.
    pub started: bool,
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const LEN: usize = 55;

/// The value of the `sampled` flag.
pub const SAMPLED: u8 = 0x01;

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // The specification allows lowercase only.
        _ => None,
    }
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

/// Parses a `traceparent` value: `version-traceid-parentid-flags`, lowercase hex, with
/// neither id all zeros. Version `00` is exactly 55 characters; a later version may be
/// longer, with a `-` after the flags (its fields are read as version 00's); `ff` is
/// invalid. `None` for anything else.
pub fn parse(value: &[u8]) -> Option<TraceContext> {
    if value.len() < LEN {
        return None;
    }
    let mut version = [0u8; 1];
    hex_into(&value[0..2], &mut version)?;
    match version[0] {
        0x00 if value.len() != LEN => return None,
        0xff => return None,
        0x00 => {}
        _ if value.len() > LEN && value[LEN] != b'-' => return None,
        _ => {}
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&value[3..35], &mut trace_id)?;
    hex_into(&value[36..52], &mut parent_id)?;
    hex_into(&value[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceContext { trace_id, parent_id, flags: flags[0], started: false })
}

/// The caller's trace context when it sent exactly one valid `traceparent`; otherwise a
/// new one, started here (random ids, flagged `sampled`: the audit line records it, and an
/// upstream with a parent-based sampler then traces the request too).
pub fn from_headers(headers: &http::HeaderMap) -> TraceContext {
    let mut values = headers.get_all(super::rewrite::TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => parse(v.as_bytes()).unwrap_or_else(start),
        _ => start(),
    }
}

thread_local! {
    /// Each thread's generator of ids, seeded from the operating system's randomness.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| SmallRng::from_entropy()));
}

/// Fills `out` with random bytes for an id (a request's, a trace's, a span's).
///
/// Ids must be unique, not secret (nothing is authorized by one), so they come from a fast
/// generator per thread (xoshiro, as OpenTelemetry's SDKs make trace ids) seeded from the
/// system's randomness, instead of the ChaCha generator: a fifth of the cost per request
/// (issue 15). Secrets (salts, the token's `jti`) keep the cryptographic one.
pub fn random_id(out: &mut [u8]) {
    if IDS.try_with(|r| r.try_borrow_mut().map(|mut r| r.fill_bytes(out)).is_ok()) != Ok(true) {
        rand::thread_rng().fill_bytes(out);
    }
}

/// A new trace context: random, non-zero ids.
pub fn start() -> TraceContext {
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    while trace_id == [0; 16] {
        random_id(&mut trace_id);
    }
    while parent_id == [0; 8] {
        random_id(&mut parent_id);
    }
    TraceContext { trace_id, parent_id, flags: SAMPLED, started: true }
}

/// Writes `bytes` as lowercase hex into `out` (twice as long).
pub(crate) fn hex_out(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

impl TraceContext {
    /// The trace id as 32 lowercase hex digits, in a buffer of the caller's stack.
    pub fn trace_id_hex(&self) -> TraceIdHex {
        hex_id(&self.trace_id)
    }

    /// The `traceparent` value (version 00) for this context.
    pub fn header(&self) -> http::HeaderValue {
        let mut out = [0u8; LEN];
        out[..3].copy_from_slice(b"00-");
        hex_out(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex_out(&self.parent_id, &mut out[36..52]);
        out[52] = b'-';
        hex_out(&[self.flags], &mut out[53..55]);
        // Hex digits and dashes only: always a valid header value.
        super::values::value(&out).unwrap_or_else(|_| http::HeaderValue::from_static(""))
    }
}

/// A trace id as hex text.
pub fn hex_id(id: &[u8; 16]) -> TraceIdHex {
    let mut out = [0u8; 32];
    hex_out(id, &mut out);
    TraceIdHex(out)
}

/// A trace id as hex text, without a heap allocation.
#[derive(Clone, Copy)]
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn allows_the_specifications_example() {
        let t = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(t.trace_id_hex().as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!((t.flags, t.started), (0x01, false));
        assert_eq!(t.header(), GOOD);
    }

    #[test]
    fn denies_uppercase_hex_and_all_zero_ids() {
        assert!(parse(GOOD.to_uppercase().as_bytes()).is_none());
        assert!(parse(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none());
        assert!(parse(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
    }

    #[test]
    fn allows_a_later_version_with_more_fields() {
        let t = parse(format!("cc-{}-what-the-future-holds", &GOOD[3..]).as_bytes()).unwrap();
        assert_eq!(t.trace_id_hex().as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(parse(format!("cc-{}", &GOOD[3..]).as_bytes()).is_some());
    }

    #[test]
    fn denies_version_ff_extra_bytes_on_00_and_a_later_version_without_a_dash() {
        assert!(parse(format!("ff-{}", &GOOD[3..]).as_bytes()).is_none());
        assert!(parse(format!("{GOOD}-extra").as_bytes()).is_none());
        assert!(parse(format!("cc-{}x", &GOOD[3..]).as_bytes()).is_none());
    }

    #[test]
    fn denies_wrong_lengths_separators_and_non_hex() {
        for bad in [
            "",
            "00",
            &GOOD[..54],
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn allows_the_callers_context_and_starts_one_when_it_is_absent_doubled_or_invalid() {
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", GOOD.parse().unwrap());
        assert_eq!(from_headers(&h), parse(GOOD.as_bytes()).unwrap());
        h.append("traceparent", GOOD.parse().unwrap());
        assert!(from_headers(&h).started);
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
        let t = from_headers(&h);
        assert!(t.started);
        let started = from_headers(&http::HeaderMap::new());
        assert!(started.started && started.flags == SAMPLED);
        // What is started parses back as itself.
        let again = parse(started.header().as_bytes()).unwrap();
        assert_eq!((again.trace_id, again.parent_id, again.flags), (started.trace_id, started.parent_id, started.flags));
        assert_ne!(from_headers(&http::HeaderMap::new()).trace_id, started.trace_id);
    }
}
