//! W3C trace context through the real sidecar: the caller's `traceparent` (and
//! `tracestate`) reach the upstream unchanged, one is started when it is absent or
//! invalid, and the audit line carries the trace id, denials included.
use std::time::{Duration, Instant};

mod common;
use common::*;

const ROUTES: &str = "routes:\n  - match: \"GET /v1/things\"\n    require: \"things:read\"\n";
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Fx {
    up: Upstream,
    px: Proxy,
    key: String,
}

fn start() -> Fx {
    let up = Upstream::start();
    let key = new_key();
    let creds = format!(
        "api_keys:\n  - name: reader\n    key_hash: \"{}\"\n    permissions: [\"things:read\"]\n    expires: 2099-01-01\n",
        sha256_hash(&key)
    );
    let px = Proxy::start(up.addr, ROUTES, &creds);
    Fx { up, px, key }
}

impl Fx {
    /// Sends GET /v1/things with the key (unless `key` is false), a fresh marker and
    /// `headers`; the response and the marker.
    fn get(&self, key: bool, headers: &[(&str, &str)]) -> (Response, String) {
        let marker = new_marker();
        let mut h: Vec<(&str, &str)> = vec![("x-test-marker", &marker)];
        if key {
            h.push(("x-api-key", &self.key));
        }
        h.extend_from_slice(headers);
        (self.px.send(&request("GET", "/v1/things", &h)), marker)
    }

    /// The upstream's `traceparent` and `tracestate` values for the request with `marker`.
    fn upstream_saw(&self, marker: &str) -> (Vec<String>, Vec<String>) {
        let seen = self.up.with_marker(marker);
        assert_eq!(seen.len(), 1, "the request reached the upstream once");
        let values = |n: &str| seen[0].header_values(n).iter().map(|v| v.to_string()).collect();
        (values("traceparent"), values("tracestate"))
    }

    /// The audit line of the request answered with `request_id` (waits for it).
    fn audit(&self, request_id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.px.stdout();
            if let Some(line) = out.lines().find(|l| l.contains(request_id) && l.contains("\"decision\"")) {
                return serde_json::from_str(line).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
            }
            assert!(Instant::now() < deadline, "no audit line for {request_id}:\n{out}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Checks a `traceparent` as the W3C specification defines version 00; its trace id.
fn valid_trace_id(tp: &str) -> &str {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(parts[0] == "00" && hex(parts[1], 32) && hex(parts[2], 16) && hex(parts[3], 2), "not a version-00 traceparent: {tp}");
    assert!(parts[1] != "0".repeat(32) && parts[2] != "0".repeat(16), "an all-zero id: {tp}");
    parts[1]
}

#[test]
fn allows_the_callers_traceparent_through_unchanged_and_audits_its_trace_id() {
    let fx = start();
    let (r, marker) = fx.get(true, &[("traceparent", CALLER), ("tracestate", "vendor=opaque")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let (tp, ts) = fx.upstream_saw(&marker);
    assert_eq!(tp, [CALLER]);
    assert_eq!(ts, ["vendor=opaque"]);
    let line = fx.audit(r.header("x-request-id").expect("x-request-id"));
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
    assert_eq!(line["outcome"], "allowed");
}

#[test]
fn starts_a_traceparent_when_the_caller_sent_none_and_audits_it() {
    let fx = start();
    let (r, marker) = fx.get(true, &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let (tp, _) = fx.upstream_saw(&marker);
    assert_eq!(tp.len(), 1, "{tp:?}");
    let trace_id = valid_trace_id(&tp[0]).to_string();
    let line = fx.audit(r.header("x-request-id").expect("x-request-id"));
    assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    // Each request its own trace.
    let (_, marker2) = fx.get(true, &[]);
    let (tp2, _) = fx.upstream_saw(&marker2);
    assert_ne!(valid_trace_id(&tp2[0]), trace_id);
}

#[test]
fn denies_an_invalid_traceparent_by_starting_a_new_one_without_its_tracestate() {
    let fx = start();
    for bad in [
        CALLER.to_uppercase(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_string(),
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        format!("{CALLER}-extra"),
    ] {
        let (r, marker) = fx.get(true, &[("traceparent", &bad), ("tracestate", "vendor=opaque")]);
        assert_eq!(r.status, 200, "{}", r.body_text());
        let (tp, ts) = fx.upstream_saw(&marker);
        assert_eq!(tp.len(), 1, "{bad}: {tp:?}");
        assert_ne!(tp[0], bad);
        let trace_id = valid_trace_id(&tp[0]).to_string();
        assert!(ts.is_empty(), "{bad}: the tracestate of an invalid parent is dropped: {ts:?}");
        let line = fx.audit(r.header("x-request-id").expect("x-request-id"));
        assert_eq!(line["trace_id"], trace_id.as_str(), "{line}");
    }
}

#[test]
fn a_denial_is_audited_with_the_callers_trace_id() {
    let fx = start();
    let (r, marker) = fx.get(false, &[("traceparent", CALLER)]);
    assert_eq!(r.status, 401);
    assert!(fx.up.with_marker(&marker).is_empty(), "a denial is not forwarded");
    let id = r.json()["request_id"].as_str().expect("request_id").to_string();
    let line = fx.audit(&id);
    assert_eq!(line["reason"], "missing_credential", "{line}");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");
}
