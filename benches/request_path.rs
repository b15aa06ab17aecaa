//! What one allowed request costs the sidecar around the decision (run: `cargo bench
//! --bench request_path`), and how many heap allocations each step makes (a counting
//! global allocator; printed before the timings):
//!
//! - `decide`: the whole decision for an API-key request (as `benches/decision.rs`);
//! - `rewrite`: the upstream request rewrite (strip credentials and identity headers, add
//!   ours, trace context), on a copy of a request head as wrk sends it (the copy is timed
//!   alone in `rewrite/copy_only`); `rewrite/forward` adds writing the result as the
//!   upstream's HTTP/1 head and dropping it, and `rewrite/sdk` does that for the six
//!   headers a client library sends.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

use portcullis::pipeline::{decide, rewrite, trace, RequestView};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: i64 = 1_900_000_000;
const KEY: &str = "bench-request-path-key";

/// Heap allocations made by `f`, averaged over `n` runs.
fn allocations_per_run(n: u64, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

fn snapshot(dir: &std::path::Path) -> portcullis::config::Snapshot {
    let main = "listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\nenvironment: production\n\
                credentials_file: credentials.yaml\nroutes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n";
    let creds = format!(
        "api_keys:\n  - name: load-key\n    key_hash: \"sha256:{}\"\n    permissions: [\"balances:read@vault/v-1\"]\n    allowed_ips: [\"127.0.0.1\"]\n    expires: 2099-01-01\n",
        hex::encode(Sha256::digest(KEY.as_bytes()))
    );
    std::fs::write(dir.join("portcullis.yaml"), main).expect("write main");
    std::fs::write(dir.join("credentials.yaml"), creds).expect("write creds");
    portcullis::config::load(&dir.join("portcullis.yaml"), NOW).unwrap_or_else(|e| panic!("fixture: {e}"))
}

/// The request head wrk sends (`wrk -H "x-api-key: …"`), as pingora parsed it.
fn wrk_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/v1/vaults/v-1/balances", Some(4)).expect("head");
    req.append_header("Host", "127.0.0.1:18002").expect("host");
    req.append_header("x-api-key", KEY).expect("key");
    req
}

/// A request head as an SDK sends it (six headers, as a client library's defaults).
fn sdk_request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/v1/vaults/v-1/balances", Some(6)).expect("head");
    for (k, v) in [
        ("Host", "wallet-api.internal:8080"),
        ("User-Agent", "wallet-sdk/2.3.1 python/3.11"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
        ("X-Api-Key", KEY),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ] {
        req.append_header(k, v).expect("header");
    }
    req
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = snapshot(dir.path());
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:18002"));
    headers.insert("x-api-key", HeaderValue::from_static(KEY));
    let peer = "127.0.0.1".parse().expect("ip");
    let view = RequestView { method: &Method::GET, target: b"/v1/vaults/v-1/balances", headers: &headers, peer, checked_path: None };
    let decision = decide(&snap, &view, NOW);
    let permit = decision.result.clone().expect("the fixture's request is allowed");
    let trace_ctx = trace::start();
    let request_id = portcullis::proxy::RequestId::new();
    let head = wrk_request();
    let sdk = sdk_request();
    // What the proxy does with the result: writes it to the upstream, then drops it.
    let forward = |head: &RequestHeader| {
        let mut req = head.clone();
        let _ = black_box(rewrite::rewrite(&mut req, &permit, &request_id, peer, &trace_ctx, false));
        let mut wire = Vec::with_capacity(512);
        req.header_to_h1_wire(&mut wire);
        black_box(wire);
    };

    let n = 10_000;
    println!("heap allocations per run:");
    println!("  decide            {:6.1}", allocations_per_run(n, || drop(black_box(decide(&snap, &view, NOW)))));
    println!("  rewrite/copy_only {:6.1}", allocations_per_run(n, || drop(black_box(head.clone()))));
    println!(
        "  rewrite           {:6.1}",
        allocations_per_run(n, || {
            let mut req = head.clone();
            let _ = black_box(rewrite::rewrite(&mut req, &permit, &request_id, peer, &trace_ctx, false));
        })
    );
    println!("  rewrite/forward   {:6.1}", allocations_per_run(n, || forward(&head)));
    println!("  rewrite/sdk       {:6.1}", allocations_per_run(n, || forward(&sdk)));

    let mut g = c.benchmark_group("request_path");
    g.bench_function("decide", |b| b.iter(|| black_box(decide(black_box(&snap), black_box(&view), NOW))));
    g.bench_function("rewrite/copy_only", |b| b.iter(|| black_box(head.clone())));
    g.bench_function("rewrite", |b| {
        b.iter(|| {
            let mut req = head.clone();
            let _ = black_box(rewrite::rewrite(&mut req, &permit, &request_id, peer, &trace_ctx, false));
            req
        })
    });
    g.bench_function("rewrite/forward", |b| b.iter(|| forward(black_box(&head))));
    g.bench_function("rewrite/sdk", |b| b.iter(|| forward(black_box(&sdk))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
