//! The Grafana dashboard (examples/grafana/portcullis.json): a well-formed dashboard over
//! the metrics that exist, each PromQL expression parsed by Prometheus's own promtool
//! (through a rules file). That every metric it names is exported by the running sidecar
//! is checked in tests/admin_metrics.rs, where every family is present.
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

#[path = "common/dashboard.rs"]
mod dashboard;

fn promtool() -> String {
    let found = Command::new("sh").args(["-c", "command -v promtool"]).output().expect("run sh");
    assert!(
        found.status.success(),
        "promtool is missing: install Debian's prometheus package (apt-get install prometheus; .ci/run does)"
    );
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

/// Runs `promtool check rules` on recording rules whose expressions are `exprs`.
fn check_rules(exprs: &[(String, String)], dir: &Path) -> (bool, String) {
    let mut rules = String::from("groups:\n  - name: portcullis-dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        // JSON strings are valid YAML scalars, so the expression goes in verbatim.
        rules.push_str(&format!("      - record: dashboard:expr_{i}\n        expr: {}\n", serde_json::to_string(expr).unwrap()));
    }
    let path = dir.join("dashboard-rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new(promtool()).args(["check", "rules"]).arg(&path).output().expect("run promtool");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn every_dashboard_expression_parses_with_promtool() {
    let exprs = dashboard::expressions();
    assert!(exprs.len() >= 20, "{exprs:?}");
    for (at, e) in &exprs {
        assert!(!e.contains('$'), "{at}: a Grafana variable left unsubstituted: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = check_rules(&exprs, dir.path());
    assert!(ok, "promtool refuses a dashboard expression:\n{out}");
    assert!(out.contains(&format!("{} rules found", exprs.len())), "{out}");
    // The check is real: promtool refuses a broken one, and names it.
    let broken = vec![("broken".to_string(), "sum(rate(portcullis_requests_total[5m])".to_string())];
    let (ok, out) = check_rules(&broken, dir.path());
    assert!(!ok, "promtool accepted a broken expression:\n{out}");
}

#[test]
fn the_dashboard_covers_the_operators_questions_and_is_well_formed() {
    let d = dashboard::dashboard();
    assert_eq!(d["uid"], "portcullis");
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars: Vec<&str> = d["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "panel id {} twice", p["id"]);
        let g = &p["gridPos"];
        assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24, "panel {:?} is wider than the grid", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {:?} uses another data source", p["title"]);
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {:?} has no targets", p["title"]));
        assert!(!targets.is_empty(), "panel {:?} has no targets", p["title"]);
        for t in targets {
            let e = t["expr"].as_str().unwrap();
            if e.contains("portcullis_") {
                assert!(e.contains("job=~\"$job\"") && e.contains("instance=~\"$instance\""), "panel {:?} ignores $job/$instance: {e}", p["title"]);
            }
        }
    }
    // Requests and denials by reason, latency, token issuance, reloads, credentials expiring soon.
    let names = dashboard::metric_names();
    for family in [
        "portcullis_requests_total",
        "portcullis_denials_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_tokens_issued_total",
        "portcullis_token_requests_refused_total",
        "portcullis_config_reloads_total",
        "portcullis_credential_expiry_timestamp_seconds",
    ] {
        assert!(names.contains(family), "the dashboard does not show {family}: {names:?}");
    }
    let text = std::fs::read_to_string(dashboard::PATH).unwrap();
    assert!(text.contains("sum by (reason) (rate(portcullis_denials_total"), "denials by reason");
}
