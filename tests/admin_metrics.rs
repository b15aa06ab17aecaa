//! The admin listener and the metrics, end to end (SPEC §8): the real `portcullis`
//! binary on ephemeral ports in front of the mock wallet upstream. Requests of every
//! kind go through the proxy; then `/metrics` is scraped and parsed with a strict
//! Prometheus text-format parser, and every family, label set and value is checked —
//! including that nothing a caller sent (paths, credential names, keys, tokens) became
//! a label value, and that no secret reached `/metrics` or the log.
//!
//! Run: `cargo test --test admin_metrics`
mod common;
#[path = "common/dashboard.rs"]
mod dashboard;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use openmetrics_parser::{MetricFamily, PrometheusType, PrometheusValue};

const BALANCES: &str = "GET /v1/vaults/{vault_id}/balances";
const STATUS: &str = "GET /v1/status";
/// `expires: 2099-12-31` is valid through the end of that day UTC.
const END_OF_2099: f64 = 4_102_444_800.0;
/// `expires: 2020-01-01`, likewise.
const END_OF_2020_01_01: f64 = 1_577_923_200.0;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// Scraping

/// One sample: its labels and its value (histograms: their `_count`).
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` response.
struct Scrape {
    text: String,
    families: HashMap<String, MetricFamily<PrometheusType, PrometheusValue>>,
}

impl Scrape {
    fn family(&self, name: &str) -> &MetricFamily<PrometheusType, PrometheusValue> {
        self.families.get(name).unwrap_or_else(|| {
            let mut names: Vec<_> = self.families.keys().collect();
            names.sort();
            panic!("family {name} missing; families: {names:?}\n{}", self.text)
        })
    }

    fn samples(&self, name: &str) -> Vec<Sample> {
        self.family(name)
            .iter_samples()
            .map(|s| {
                let labels = s
                    .get_labelset()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let value = match &s.value {
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                    PrometheusValue::Histogram(h) => h.count.map_or(f64::NAN, |c| c as f64),
                    PrometheusValue::Summary(s) => s.count.map_or(f64::NAN, |c| c as f64),
                };
                Sample { labels, value }
            })
            .collect()
    }

    /// The value of the sample of `name` whose labels are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples(name)
            .into_iter()
            .find(|s| s.labels == want)
            .map(|s| s.value)
    }

    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?}; have {:?}", self.samples(name)))
    }

    /// Every label set of `name`, as `label=value` lists.
    fn label_sets(&self, name: &str) -> BTreeSet<Vec<(String, String)>> {
        self.samples(name)
            .into_iter()
            .map(|s| s.labels.into_iter().collect())
            .collect()
    }

    /// Every (label name, value) pair in the whole exposition.
    fn all_label_values(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for name in self.families.keys() {
            for s in self.samples(name) {
                out.extend(s.labels);
            }
        }
        out
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    send_raw(addr, &request("GET", path, &[]))
}

fn scrape(admin: SocketAddr) -> Scrape {
    let resp = get(admin, "/metrics");
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body_text());
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "Content-Type {ct:?}");
    let text = resp.body_text();
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text format: {e:?}\n{text}"));
    Scrape {
        text,
        families: parsed.families,
    }
}

/// Scrapes until `done` holds (the proxy records a request in its logging phase, just
/// after the response went out), at most 10 s.
fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(admin);
        if done(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", s.text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum over all samples of `name` (histograms: of their counts); 0 if absent.
fn sum_of(s: &Scrape, name: &str) -> f64 {
    s.families
        .get(name)
        .map_or(0.0, |_| s.samples(name).iter().map(|x| x.value).sum())
}

fn total_requests(s: &Scrape) -> f64 {
    sum_of(s, "portcullis_requests_total")
}

// ---------------------------------------------------------------------------
// Config

/// A fresh client secret for one test run.
fn new_secret() -> String {
    format!("cs_test_{}", new_marker())
}

fn main_extra() -> String {
    format!(
        "tokens:\n  issuer: \"https://auth.test.invalid\"\n  audience: \"wallet-api\"\n  signing_key: signing.pem\n\
         routes:\n  - match: \"{BALANCES}\"\n    require: \"balances:read\"\n  - match: \"{STATUS}\"\n    public: true\n"
    )
}

struct Keys {
    reader: String,
    far_away: String,
    switched_off: String,
    long_gone: String,
    secret: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            reader: new_key(),
            far_away: new_key(),
            switched_off: new_key(),
            long_gone: new_key(),
            secret: new_secret(),
        }
    }

    /// The credentials file; `extra_key` adds an API key named `brand-new`, and
    /// `with_far_away` keeps the `far-away` key.
    fn credentials(&self, with_far_away: bool, extra_key: Option<&str>) -> String {
        let key = |name: &str, key: &str, extra: &str| {
            format!(
                "  - name: {name}\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n{extra}",
                sha256_hash(key)
            )
        };
        let mut s = format!(
            "clients:\n  - id: reporting-svc\n    secret_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    \
             allowed_ips: [\"127.0.0.1\"]\n    expires: 2099-12-31\napi_keys:\n",
            sha256_hash(&self.secret)
        );
        s += &key(
            "metrics-reader",
            &self.reader,
            "    allowed_ips: [\"127.0.0.1\"]\n    expires: 2099-12-31\n",
        );
        if with_far_away {
            s += &key(
                "far-away",
                &self.far_away,
                "    allowed_ips: [\"192.0.2.1\"]\n    expires: 2099-12-31\n",
            );
        }
        s += &key(
            "switched-off",
            &self.switched_off,
            "    expires: 2099-12-31\n    disabled: true\n",
        );
        s += &key("long-gone", &self.long_gone, "    expires: 2020-01-01\n");
        if let Some(k) = extra_key {
            s += &key("brand-new", k, "    expires: 2099-12-31\n");
        }
        s
    }
}

fn start(upstream: SocketAddr, main_extra: &str, credentials: &str) -> Proxy {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!("{}{}", main_head(addr, admin, upstream), main_extra);
    let dir = write_config(&main, credentials);
    let pem = portcullis::token::keys::generate_pem("ed25519").expect("generate a signing key");
    std::fs::write(dir.path().join("signing.pem"), pem).expect("write signing.pem");
    let proxy = Proxy::spawn(dir, addr, admin);
    // The admin listener is a separate service: wait for it too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_send_raw(None, admin, &request("GET", "/healthz", &[])).is_err() {
        assert!(
            Instant::now() < deadline,
            "admin listener never came up\n{}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy
}

fn token_request(proxy: &Proxy, client_id: &str, secret: &str) -> Response {
    let body = format!("grant_type=client_credentials&client_id={client_id}&client_secret={secret}");
    let mut raw = request(
        "POST",
        "/oauth/token",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", &body.len().to_string()),
        ],
    );
    raw.extend_from_slice(body.as_bytes());
    proxy.send(&raw)
}

/// Every `portcullis_*` metric and every `label="value"` (or `label=~"a|b"`) matcher in
/// the expressions of `examples/prometheus/alerts.yaml`.
fn alert_rule_references() -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prometheus/alerts.yaml");
    let text = std::fs::read_to_string(path).expect("read alerts.yaml");
    let doc: serde_json::Value = serde_saphyr::from_str(&text).expect("alerts.yaml is YAML");
    let mut names = BTreeSet::new();
    let mut matchers = BTreeSet::new();
    let groups = doc["groups"].as_array().expect("groups");
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().expect("rules")) {
        let expr = rule["expr"].as_str().expect("expr");
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        for word in expr.split(|c: char| !ident(c)) {
            if word.starts_with("portcullis_") {
                names.insert(word.to_string());
            }
        }
        // label="value" and label=~"a|b" inside selectors.
        let mut rest = expr;
        while let Some(i) = rest.find("=\"").or_else(|| rest.find("=~\"")) {
            let (before, after) = rest.split_at(i);
            let label: String = before
                .chars()
                .rev()
                .take_while(|c| ident(*c))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let after = after
                .trim_start_matches('=')
                .trim_start_matches('~')
                .trim_start_matches('"');
            let end = after.find('"').expect("closing quote");
            for value in after[..end].split('|') {
                matchers.insert((label.clone(), value.to_string()));
            }
            rest = &after[end + 1..];
        }
    }
    (names, matchers)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn exposes_every_family_with_labels_from_config_only() {
    let started = unix_now().floor();
    let upstream = Upstream::start();
    let keys = Keys::new();
    let proxy = start(upstream.addr, &main_extra(), &keys.credentials(true, None));

    // Things a caller controls, each unique to this run: none may reach /metrics.
    let marker = new_marker();
    let bogus_key = new_key();
    let unknown_path = format!("/zz-{marker}/probe");
    let spoofed = format!("spoofed-{marker}");
    let bogus_bearer = format!("not-a-jwt-{marker}");

    let balances = "/v1/vaults/v-1/balances";
    let send = |path: &str, headers: &[(&str, &str)]| proxy.send(&request("GET", path, headers));

    // Allowed with an API key, twice (once with a spoofed identity header).
    assert_eq!(send(balances, &[("x-api-key", &keys.reader)]).status, 200);
    assert_eq!(
        send(
            balances,
            &[("x-api-key", &keys.reader), ("x-auth-credential", &spoofed)]
        )
        .status,
        200
    );
    // Denied: no credential, an unknown key, a disabled key, an expired key, a bad token.
    assert_error(&send(balances, &[]), 401, Some("missing_credential"));
    assert_error(
        &send(balances, &[("x-api-key", &bogus_key)]),
        401,
        Some("invalid_api_key"),
    );
    assert_error(
        &send(balances, &[("x-api-key", &keys.switched_off)]),
        401,
        Some("invalid_api_key"),
    );
    assert_error(
        &send(balances, &[("x-api-key", &keys.long_gone)]),
        401,
        Some("invalid_api_key"),
    );
    let auth = format!("Bearer {bogus_bearer}");
    assert_error(&send(balances, &[("authorization", &auth)]), 401, Some("invalid_token"));
    // Denied with a known credential: an unknown path, a wrong address.
    assert_error(
        &send(&unknown_path, &[("x-api-key", &keys.reader)]),
        403,
        Some("route_not_allowed"),
    );
    assert_error(
        &send(balances, &[("x-api-key", &keys.far_away)]),
        403,
        Some("ip_not_allowed"),
    );
    // A public route.
    assert_eq!(send("/v1/status", &[]).status, 200);
    // Tokens: one refused, one issued and used.
    assert_eq!(token_request(&proxy, "reporting-svc", "wrong-secret").status, 401);
    let issued = token_request(&proxy, "reporting-svc", &keys.secret);
    assert_eq!(issued.status, 200, "{}", issued.body_text());
    let token = issued.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let bearer = format!("Bearer {token}");
    assert_eq!(send(balances, &[("authorization", &bearer)]).status, 200);
    let used_until = unix_now().ceil();

    // 11 proxied requests; the two token requests are counted apart.
    let s = scrape_until(proxy.admin_addr, "11 proxied requests", |s| {
        total_requests(s) >= 11.0 && sum_of(s, "portcullis_request_duration_seconds") >= 11.0
    });

    // Every family, with its type.
    use PrometheusType::{Counter, Gauge, Histogram};
    for (name, ty) in [
        ("portcullis_requests_total", Counter),
        ("portcullis_denials_total", Counter),
        ("portcullis_request_duration_seconds", Histogram),
        ("portcullis_auth_duration_seconds", Histogram),
        ("portcullis_upstream_errors_total", Counter),
        ("portcullis_tokens_issued_total", Counter),
        ("portcullis_token_requests_refused_total", Counter),
        ("portcullis_config_reloads_total", Counter),
        ("portcullis_config_last_reload_success_timestamp_seconds", Gauge),
        ("portcullis_config_info", Gauge),
        ("portcullis_credential_expiry_timestamp_seconds", Gauge),
        ("portcullis_credential_last_used_timestamp_seconds", Gauge),
        ("portcullis_credentials", Gauge),
    ] {
        assert_eq!(s.family(name).family_type, ty, "type of {name}");
    }
    for name in s.families.keys() {
        assert!(
            name.starts_with("portcullis_"),
            "family {name} is not prefixed portcullis_"
        );
    }

    // Requests, exactly.
    let req = |route: &str, credential: &str, outcome: &str, class: &str| {
        vec![
            ("credential".to_string(), credential.to_string()),
            ("outcome".to_string(), outcome.to_string()),
            ("route".to_string(), route.to_string()),
            ("status_class".to_string(), class.to_string()),
        ]
    };
    let expected: BTreeMap<Vec<(String, String)>, f64> = [
        (req(BALANCES, "metrics-reader", "allowed", "2xx"), 2.0),
        (req(BALANCES, "reporting-svc", "allowed", "2xx"), 1.0),
        (req(BALANCES, "", "denied", "4xx"), 5.0),
        (req("", "metrics-reader", "denied", "4xx"), 1.0),
        (req(BALANCES, "far-away", "denied", "4xx"), 1.0),
        (req(STATUS, "", "allowed", "2xx"), 1.0),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<Vec<(String, String)>, f64> = s
        .samples("portcullis_requests_total")
        .into_iter()
        .map(|x| (x.labels.into_iter().collect(), x.value))
        .collect();
    assert_eq!(got, expected, "portcullis_requests_total");

    // Denials by reason: every 4xx code present (upstream failures are counted apart),
    // the right counts.
    for reason in portcullis::rejection::Reason::ALL {
        let sample = s.value("portcullis_denials_total", &[("reason", reason.code())]);
        assert_eq!(
            sample.is_some(),
            reason.status() < 500,
            "denials_total{{reason={:?}}}",
            reason.code()
        );
    }
    for (reason, n) in [
        ("missing_credential", 1.0),
        ("invalid_api_key", 3.0),
        ("invalid_token", 1.0),
        ("route_not_allowed", 1.0),
        ("ip_not_allowed", 1.0),
        ("insufficient_scope", 0.0),
        ("invalid_request", 0.0),
    ] {
        assert_eq!(
            s.must("portcullis_denials_total", &[("reason", reason)]),
            n,
            "denials {reason}"
        );
    }

    // Latency histograms: one observation per proxied request, by route.
    let by_route: f64 = s
        .samples("portcullis_request_duration_seconds")
        .iter()
        .map(|x| x.value)
        .sum();
    assert_eq!(by_route, 11.0);
    assert_eq!(
        s.must("portcullis_request_duration_seconds", &[("route", BALANCES)]),
        9.0
    );
    assert_eq!(s.must("portcullis_request_duration_seconds", &[("route", STATUS)]), 1.0);
    assert_eq!(s.must("portcullis_request_duration_seconds", &[("route", "")]), 1.0);
    let auth_kinds = s.label_sets("portcullis_auth_duration_seconds");
    for kind in ["api_key", "client", "none"] {
        assert!(
            auth_kinds.contains(&vec![("kind".to_string(), kind.to_string())]),
            "auth kind {kind}"
        );
    }
    assert!(s.must("portcullis_auth_duration_seconds", &[("kind", "api_key")]) >= 4.0);
    assert!(s.must("portcullis_auth_duration_seconds", &[("kind", "client")]) >= 1.0);
    let buckets = match &s
        .family("portcullis_auth_duration_seconds")
        .iter_samples()
        .next()
        .expect("an auth histogram")
        .value
    {
        PrometheusValue::Histogram(h) => h.buckets.iter().map(|b| b.upper_bound).collect::<Vec<_>>(),
        other => panic!("not a histogram: {other:?}"),
    };
    assert!(
        buckets.iter().any(|b| *b <= 0.00005),
        "auth buckets start in microseconds: {buckets:?}"
    );
    assert!(
        buckets.iter().any(|b| *b >= 1.0),
        "auth buckets reach seconds: {buckets:?}"
    );

    // Upstream errors: both kinds present, none happened.
    assert_eq!(
        s.must("portcullis_upstream_errors_total", &[("kind", "unavailable")]),
        0.0
    );
    assert_eq!(s.must("portcullis_upstream_errors_total", &[("kind", "timeout")]), 0.0);

    // Tokens.
    assert_eq!(
        s.must("portcullis_tokens_issued_total", &[("client", "reporting-svc")]),
        1.0
    );
    assert_eq!(s.label_sets("portcullis_tokens_issued_total").len(), 1);
    assert_eq!(
        s.must(
            "portcullis_token_requests_refused_total",
            &[("reason", "invalid_client")]
        ),
        1.0
    );

    // Config.
    assert_eq!(s.must("portcullis_config_reloads_total", &[("result", "failure")]), 0.0);
    assert!(s
        .value("portcullis_config_reloads_total", &[("result", "success")])
        .is_some());
    let loaded = s.must("portcullis_config_last_reload_success_timestamp_seconds", &[]);
    assert!(
        loaded >= started - 1.0 && loaded <= unix_now() + 1.0,
        "last reload {loaded}"
    );
    let info = s.samples("portcullis_config_info");
    assert_eq!(info.len(), 1, "exactly one config hash: {info:?}");
    let hash = &info[0].labels["hash"];
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "hash {hash:?}"
    );
    assert_eq!(info[0].value, 1.0);

    // Per credential: expiry and last use, exactly the configured ones.
    let cred = |name: &str, kind: &str| vec![("credential", name.to_string()), ("kind", kind.to_string())];
    let configured = [
        ("reporting-svc", "client", END_OF_2099),
        ("metrics-reader", "api_key", END_OF_2099),
        ("far-away", "api_key", END_OF_2099),
        ("switched-off", "api_key", END_OF_2099),
        ("long-gone", "api_key", END_OF_2020_01_01),
    ];
    let want_sets: BTreeSet<Vec<(String, String)>> = configured
        .iter()
        .map(|(n, k, _)| cred(n, k).into_iter().map(|(a, b)| (a.to_string(), b)).collect())
        .collect();
    assert_eq!(
        s.label_sets("portcullis_credential_expiry_timestamp_seconds"),
        want_sets
    );
    assert_eq!(
        s.label_sets("portcullis_credential_last_used_timestamp_seconds"),
        want_sets
    );
    for (name, kind, expiry) in configured {
        let labels = [("credential", name), ("kind", kind)];
        assert_eq!(
            s.must("portcullis_credential_expiry_timestamp_seconds", &labels),
            expiry,
            "{name}"
        );
        let used = s.must("portcullis_credential_last_used_timestamp_seconds", &labels);
        if name == "metrics-reader" || name == "reporting-svc" {
            assert!(used >= started && used <= used_until, "{name} last used {used}");
        } else {
            assert_eq!(used, 0.0, "{name} was never let through");
        }
    }
    for (kind, state, n) in [
        ("api_key", "active", 2.0),
        ("api_key", "disabled", 1.0),
        ("api_key", "expired", 1.0),
        ("client", "active", 1.0),
        ("client", "expired", 0.0),
    ] {
        assert_eq!(
            s.must("portcullis_credentials", &[("kind", kind), ("state", state)]),
            n,
            "{kind} {state}"
        );
    }

    // No label value that config or a fixed set did not define.
    let codes: Vec<&str> = portcullis::rejection::Reason::ALL.iter().map(|r| r.code()).collect();
    let allowed_value = |label: &str, value: &str| -> bool {
        match label {
            "route" => ["", BALANCES, STATUS].contains(&value),
            "credential" | "client" => [
                "",
                "reporting-svc",
                "metrics-reader",
                "far-away",
                "switched-off",
                "long-gone",
            ]
            .contains(&value),
            "reason" => codes.contains(&value) || portcullis::token::endpoint::OAuthCode::ALL.iter().any(|c| c.as_str() == value),
            "outcome" => ["allowed", "denied", "error", "shadow_denied", "client_closed"].contains(&value),
            "status_class" => ["1xx", "2xx", "3xx", "4xx", "5xx", "none"].contains(&value),
            "kind" => ["client", "api_key", "external", "none", "unavailable", "timeout"].contains(&value),
            "state" => ["active", "disabled", "expired", "user_missing"].contains(&value),
            "within" => ["7d", "30d"].contains(&value),
            "result" => ["success", "failure"].contains(&value),
            "hash" => value == hash,
            "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
            _ => false,
        }
    };
    for (label, value) in s.all_label_values() {
        assert!(
            allowed_value(&label, &value),
            "label {label}={value:?} does not come from config"
        );
    }

    // The example alert rules use only metrics and label values that exist.
    let (names, matchers) = alert_rule_references();
    assert!(names.len() >= 8, "alert rules reference {names:?}");
    for name in &names {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| s.families.contains_key(*base)))
            .unwrap_or(name);
        assert!(
            s.families.contains_key(family),
            "alerts.yaml uses {name}, which /metrics does not have"
        );
    }
    for (label, value) in &matchers {
        if label == "job" {
            continue; // a Prometheus target label, not ours
        }
        assert!(
            allowed_value(label, value),
            "alerts.yaml matches {label}=\"{value}\", which portcullis never exports"
        );
    }

    // The Grafana dashboard too (examples/grafana/portcullis.json; promtool parses its
    // expressions in tests/dashboard.rs).
    let names = dashboard::metric_names();
    assert!(names.len() >= 15, "the dashboard references {names:?}");
    for name in &names {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| s.families.contains_key(*base)))
            .unwrap_or(name);
        assert!(s.families.contains_key(family), "the dashboard uses {name}, which /metrics does not have");
    }
    for (label, value) in dashboard::matchers() {
        assert!(allowed_value(&label, &value), "the dashboard matches {label}=\"{value}\", which portcullis never exports");
    }

    // Nothing a caller sent, and no secret, in /metrics; no secret in the log.
    for (what, needle) in [
        ("the marker", marker.as_str()),
        ("the unknown path", unknown_path.as_str()),
        ("the spoofed credential", spoofed.as_str()),
        ("the bogus bearer", bogus_bearer.as_str()),
        ("the API key", keys.reader.as_str()),
        ("the bogus API key", bogus_key.as_str()),
        ("the client secret", keys.secret.as_str()),
        ("the access token", token.as_str()),
    ] {
        assert!(!s.text.contains(needle), "{what} ({needle}) appears in /metrics");
    }
    let log = proxy.stdout();
    assert!(log.contains("decision"), "no audit log captured:\n{log}");
    for (what, needle) in [
        ("the API key", keys.reader.as_str()),
        ("the far-away API key", keys.far_away.as_str()),
        ("the bogus API key", bogus_key.as_str()),
        ("the client secret", keys.secret.as_str()),
        ("the access token", token.as_str()),
        (
            "the API key's hash",
            sha256_hash(&keys.reader).trim_start_matches("sha256:"),
        ),
    ] {
        assert!(!log.contains(needle), "{what} appears in the log");
        assert!(!proxy.stderr().contains(needle), "{what} appears on stderr");
    }
}

#[test]
fn serves_health_readiness_and_nothing_else() {
    let upstream = Upstream::start();
    let keys = Keys::new();
    let proxy = start(upstream.addr, &main_extra(), &keys.credentials(true, None));
    let admin = proxy.admin_addr;

    let health = get(admin, "/healthz");
    assert_eq!((health.status, health.body_text().trim()), (200, "ok"));
    let ready = get(admin, "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body_text());
    // Probes carry a query string sometimes; it is ignored.
    assert_eq!(get(admin, "/healthz?verbose=1").status, 200);

    for path in ["/", "/metrics/", "/admin", "/v1/status", "/healthz/../metrics"] {
        assert_eq!(get(admin, path).status, 404, "GET {path}");
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let resp = send_raw(admin, &request(method, "/metrics", &[("Content-Length", "0")]));
        assert_eq!(resp.status, 405, "{method} /metrics");
        assert_eq!(resp.header("allow"), Some("GET"), "{method} /metrics");
    }
    // A body on a refused request does not poison the connection: it is closed.
    let resp = send_raw(
        admin,
        &request(
            "POST",
            "/metrics",
            &[("Content-Length", "5"), ("Connection", "keep-alive")],
        )
        .into_iter()
        .chain(b"hello".iter().copied())
        .collect::<Vec<_>>(),
    );
    assert_eq!(resp.status, 405);

    // The admin listener is not the proxy: its paths are not proxied, and vice versa.
    assert_error(
        &proxy.send(&request("GET", "/metrics", &[])),
        401,
        Some("missing_credential"),
    );
    assert_eq!(upstream.count(), 0, "nothing reached the upstream");
}

#[test]
fn counts_upstream_failures_by_kind() {
    // Unavailable: nothing listens on the upstream port.
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let keys = Keys::new();
    let proxy = start(dead, &main_extra(), &keys.credentials(true, None));
    let resp = proxy.send(&request(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", &keys.reader)],
    ));
    assert_error(&resp, 502, Some("upstream_unavailable"));
    let s = scrape_until(proxy.admin_addr, "the 502", |s| {
        total_requests(s) >= 1.0 && sum_of(s, "portcullis_upstream_errors_total") >= 1.0
    });
    assert_eq!(
        s.must("portcullis_upstream_errors_total", &[("kind", "unavailable")]),
        1.0
    );
    assert_eq!(s.must("portcullis_upstream_errors_total", &[("kind", "timeout")]), 0.0);
    assert_eq!(
        s.must(
            "portcullis_requests_total",
            &[
                ("route", BALANCES),
                ("credential", "metrics-reader"),
                ("outcome", "error"),
                ("status_class", "5xx")
            ]
        ),
        1.0
    );
    let denied: f64 = s.samples("portcullis_denials_total").iter().map(|x| x.value).sum();
    assert_eq!(denied, 0.0, "an upstream failure is not a denial");
    drop(proxy);

    // Timeout: the upstream answers after 3 s, the sidecar waits 0.5 s.
    let upstream = Upstream::start();
    let extra = format!("upstream_timeout: 0.5\n{}", main_extra());
    let proxy = start(upstream.addr, &extra, &keys.credentials(true, None));
    let resp = proxy.send(&request(
        "GET",
        "/v1/vaults/v-1/balances?slow_ms=3000",
        &[("x-api-key", &keys.reader)],
    ));
    assert_error(&resp, 504, Some("upstream_timeout"));
    let s = scrape_until(proxy.admin_addr, "the 504", |s| {
        total_requests(s) >= 1.0 && sum_of(s, "portcullis_upstream_errors_total") >= 1.0
    });
    assert_eq!(s.must("portcullis_upstream_errors_total", &[("kind", "timeout")]), 1.0);
    assert_eq!(
        s.must("portcullis_upstream_errors_total", &[("kind", "unavailable")]),
        0.0
    );
}

/// Needs hot reload (SPEC §7) wired into `serve`.
#[test]
fn follows_the_credentials_file_across_reloads() {
    let upstream = Upstream::start();
    let keys = Keys::new();
    let proxy = start(upstream.addr, &main_extra(), &keys.credentials(true, None));
    let before = scrape(proxy.admin_addr);
    let old_hash = before.samples("portcullis_config_info")[0].labels["hash"].clone();
    assert!(before
        .value(
            "portcullis_credential_expiry_timestamp_seconds",
            &[("credential", "far-away"), ("kind", "api_key")]
        )
        .is_some());
    assert_eq!(
        proxy
            .send(&request(
                "GET",
                "/v1/vaults/v-1/balances",
                &[("x-api-key", &keys.reader)]
            ))
            .status,
        200
    );
    let reader = [("credential", "metrics-reader"), ("kind", "api_key")];
    let used = scrape_until(proxy.admin_addr, "the request", |s| {
        s.value("portcullis_credential_last_used_timestamp_seconds", &reader)
            .is_some_and(|v| v > 0.0)
    })
    .must("portcullis_credential_last_used_timestamp_seconds", &reader);

    // Delete far-away, add brand-new.
    let new_key_text = new_key();
    let creds = proxy.dir.path().join("credentials.yaml");
    std::fs::write(&creds, keys.credentials(false, Some(&new_key_text))).expect("rewrite credentials");
    let s = scrape_until(proxy.admin_addr, "the reload", |s| {
        s.value(
            "portcullis_credential_expiry_timestamp_seconds",
            &[("credential", "brand-new"), ("kind", "api_key")],
        )
        .is_some()
    });
    for family in [
        "portcullis_credential_expiry_timestamp_seconds",
        "portcullis_credential_last_used_timestamp_seconds",
    ] {
        assert!(
            !s.label_sets(family).iter().flatten().any(|(_, v)| v == "far-away"),
            "deleted credential still in {family}"
        );
    }
    let info = s.samples("portcullis_config_info");
    assert_eq!(info.len(), 1, "exactly one config hash after a reload: {info:?}");
    assert_ne!(info[0].labels["hash"], old_hash);
    assert!(s.must("portcullis_config_reloads_total", &[("result", "success")]) >= 1.0);
    assert_eq!(
        s.must(
            "portcullis_credential_last_used_timestamp_seconds",
            &[("credential", "metrics-reader"), ("kind", "api_key")]
        ),
        used,
        "a kept credential keeps its last use"
    );
    assert_eq!(
        s.must("portcullis_credentials", &[("kind", "api_key"), ("state", "active")]),
        2.0
    );

    // A broken file: counted as a failure, the last good config keeps serving.
    std::fs::write(&creds, "api_keys: [ this is not yaml").expect("break credentials");
    let s = scrape_until(proxy.admin_addr, "the failed reload", |s| {
        s.value("portcullis_config_reloads_total", &[("result", "failure")])
            .is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        s.samples("portcullis_config_info")[0].labels["hash"],
        info[0].labels["hash"]
    );
    assert!(s
        .value(
            "portcullis_credential_expiry_timestamp_seconds",
            &[("credential", "brand-new"), ("kind", "api_key")]
        )
        .is_some());
    assert_eq!(
        get(proxy.admin_addr, "/readyz").status,
        200,
        "a failed reload leaves the sidecar ready"
    );
    assert_eq!(
        proxy
            .send(&request(
                "GET",
                "/v1/vaults/v-1/balances",
                &[("x-api-key", &new_key_text)]
            ))
            .status,
        200
    );
}
