//! OTLP export of one span per request (`OTEL_EXPORTER_OTLP_ENDPOINT`, off by default),
//! against a receiver in this test that speaks OTLP/HTTP and decodes what is sent (the
//! JSON encoding of `ExportTraceServiceRequest`).
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Every export body received at `/v1/traces`.
fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    reader.read_exact(&mut body).unwrap();
                    if target == "/v1/traces" {
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            g.lock().unwrap().push(v);
                        }
                    }
                    let mut s = &stream;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (addr, got)
}

fn spans(got: &Arc<Mutex<Vec<Value>>>) -> Vec<Value> {
    let mut out = Vec::new();
    for body in got.lock().unwrap().iter() {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                out.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    out
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

#[test]
fn exports_one_span_per_request_with_the_request_trace_ids_and_no_secret() {
    let (addr, got) = receiver();
    // The child inherits these: export on, batches sent every 100 ms.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let upstream = Upstream::start();
    let key = new_key();
    let creds = format!(
        "api_keys:\n  - name: traced\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: 2099-12-31\n",
        sha256_hash(&key)
    );
    let routes = "routes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n";
    let proxy = Proxy::start(upstream.addr, routes, &creds);
    std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = proxy.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key), ("traceparent", caller)]));
    assert_eq!(r.status, 200);
    let marker = new_marker();
    let r = proxy.send(&request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", &key), ("x-test-marker", &marker)]));
    assert_eq!(r.status, 200);
    let r = proxy.send(&request("GET", "/v1/nowhere", &[("x-api-key", &key)]));
    assert_eq!(r.status, 403);

    let deadline = Instant::now() + Duration::from_secs(10);
    while spans(&got).len() < 3 {
        assert!(Instant::now() < deadline, "spans received: {:?}", spans(&got));
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = spans(&got);
    assert_eq!(all.len(), 3, "one span per request: {all:?}");
    // The caller's trace: the span is a child of the caller's span.
    let s = all.iter().find(|s| s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736").expect("the caller's trace");
    assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(s["name"], "GET /v1/vaults/{vault_id}/balances");
    assert_eq!(attr(s, "portcullis.outcome").unwrap()["stringValue"], "allowed");
    assert_eq!(attr(s, "portcullis.credential").unwrap()["stringValue"], "traced");
    // A trace started here: the upstream's parent is this span.
    let seen = upstream.with_marker(&marker);
    let tp = seen[0].header_values("traceparent")[0].to_string();
    let (tid, pid) = (&tp[3..35], &tp[36..52]);
    let started = all.iter().find(|s| s["traceId"] == tid).expect("the started trace's span");
    assert_eq!(started["spanId"], pid, "the upstream's parent id is this span");
    // A denial has its span too, with the reason.
    let denied = all.iter().find(|s| attr(s, "portcullis.outcome").is_some_and(|v| v["stringValue"] == "denied")).expect("the denial's span");
    assert_eq!(attr(denied, "portcullis.reason").unwrap()["stringValue"], "route_not_allowed");
    // Never a secret.
    let text = serde_json::to_string(&*got.lock().unwrap()).unwrap();
    assert!(!text.contains(&key) && !text.contains(&sha256_hash(&key)[7..]), "a secret was exported");
    drop(proxy);
}
