//! The Grafana dashboard (examples/grafana/portcullis.json) as the tests read it: every
//! PromQL expression in it, with Grafana's variables replaced by what they stand for, so
//! promtool can parse them and their metric names can be checked against /metrics.
#![allow(dead_code)]
use std::collections::BTreeSet;

pub const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/grafana/portcullis.json");

pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(PATH).expect("read examples/grafana/portcullis.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Grafana's variables and what a query would get for them (longest names first).
const VARIABLES: [(&str, &str); 5] = [
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
    ("$instance", ".+"),
    ("$job", ".+"),
];

pub fn substitute(expr: &str) -> String {
    VARIABLES.iter().fold(expr.to_string(), |e, (var, value)| e.replace(var, value))
}

/// (where, expression) for every panel target and every query variable (the series
/// selector inside `label_values(…, label)`), variables substituted.
pub fn expressions() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("panel {:?} has a target without expr", p["title"]));
            out.push((format!("panel {:?} {}", p["title"].as_str().unwrap_or(""), t["refId"].as_str().unwrap_or("")), substitute(expr)));
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().or_else(|| v["query"].as_str()).expect("a variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| panic!("variable {:?}: not label_values(selector, label): {q}", v["name"]));
        out.push((format!("variable {:?}", v["name"].as_str().unwrap_or("")), substitute(inner)));
    }
    out
}

/// Every `portcullis_*` name in the dashboard's expressions.
pub fn metric_names() -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    expressions()
        .iter()
        .flat_map(|(_, e)| e.split(|c: char| !ident(c)).filter(|w| w.starts_with("portcullis_")).map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Every `label="value"` matcher in the dashboard's expressions (not `=~`, which here are
/// only the job and instance variables).
pub fn matchers() -> BTreeSet<(String, String)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    for (_, e) in expressions() {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("=\"") {
            let (before, after) = rest.split_at(i);
            let label: String = before.chars().rev().take_while(|c| ident(*c)).collect::<Vec<_>>().into_iter().rev().collect();
            let after = &after[2..];
            let end = after.find('"').expect("closing quote");
            if !before.ends_with(['!', '=', '~']) {
                out.insert((label, after[..end].to_string()));
            }
            rest = &after[end + 1..];
        }
    }
    out
}
