//! The API Access console in a real browser: Debian's headless Chromium driven by
//! Selenium (tests/console_browser.py) against the real binary, its management listener,
//! its proxy and the mock wallet upstream. Run twice: without approval, and with
//! `approval.required` (two administrators, the requester cannot approve its own request).
//!
//! Needs `chromium` and `chromium-driver` (Debian) and the Python packages of
//! tests/requirements.txt; `.ci/run` installs them. Screenshots go to
//! `target/console-screenshots/` (the ones in docs/ come from such a run).
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn ensure_browser() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
        );
    }
    let import = || Command::new("python3").args(["-c", "import selenium, requests"]).output().expect("run python3");
    if import().status.success() {
        return;
    }
    let req = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/requirements.txt");
    let pip = Command::new("python3").args(["-m", "pip", "install", "--quiet", "-r"]).arg(&req).output().expect("run pip");
    assert!(pip.status.success(), "pip install -r {} failed:\n{}", req.display(), String::from_utf8_lossy(&pip.stderr));
    assert!(import().status.success(), "selenium still does not import");
}

const ROUTES: &str = "routes:
  - match: \"GET /v1/vaults/{vault_id}/balances\"
    require: \"balances:read\"
  - match: \"GET /v1/transactions\"
    require: \"transactions:read\"
  - match: \"POST /v1/transactions\"
    require: \"transactions:create\"
";

fn run_story(approval: bool) -> String {
    let upstream = Upstream::start();
    let (admin, admin2, bob) = (new_key(), new_key(), new_key());
    let creds = format!(
        "users:
  - name: bob
    roles: [transactions]
api_keys:
  - name: console-admin
    key_hash: \"{}\"
    roles: [wallets, transactions, controls, monitoring]
    permissions: [\"api_access:change\", \"api_access:read\"]
    expires: 2099-12-31
  - name: console-approver
    key_hash: \"{}\"
    roles: [wallets, transactions, controls, monitoring]
    permissions: [\"api_access:*\"]
    expires: 2099-12-31
  - name: bob-console
    key_hash: \"{}\"
    user: bob
    expires: 2099-12-31
    notes: \"Bob signs in with this one\"
  - name: old-partner
    key_hash: \"{}\"
    permissions: [\"balances:read\"]
    expires: 2021-06-30
    notes: \"expired: kept for the record\"
clients:
  - id: reporting
    secret_hash: \"{}\"
    roles: [transactions]
    expires: 2099-12-31
    notes: \"nightly reports\"
",
        sha256_hash(&admin),
        sha256_hash(&admin2),
        sha256_hash(&bob),
        sha256_hash(&new_key()),
        sha256_hash(&new_key()),
    );
    let mgmt: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!(
        "{}{ROUTES}tokens:\n  issuer: \"https://auth.console.test\"\n  audience: \"wallet-api\"\n  signing_key: signing.pem\n\
         management:\n  listen: \"{mgmt}\"\n  approval:\n    required: {approval}\n",
        main_head(addr, admin_addr, upstream.addr)
    );
    let dir = write_config(&main, &creds);
    let key = dir.path().join("signing.pem");
    let out = Command::new(bin()).args(["keygen", "--out"]).arg(&key).output().expect("keygen");
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let proxy = Proxy::spawn(dir, addr, admin_addr);

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots").join(if approval { "approval" } else { "direct" });
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser.py");
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(&script)
        .env("CONSOLE_URL", format!("http://{mgmt}/"))
        .env("PROXY_URL", format!("http://{}", proxy.addr))
        .env("ADMIN_KEY", &admin)
        .env("ADMIN2_KEY", &admin2)
        .env("USER_KEY", &bob)
        .env("EXPIRED_KEY_NAME", "old-partner")
        .env("SCREENSHOT_DIR", &shots)
        .output()
        .expect("run tests/console_browser.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the browser story failed (approval: {approval}; screenshots in {}):\n{stdout}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(300));
    // The management requests of the story are in the audit log, without a secret.
    let audit: Vec<serde_json::Value> =
        proxy.stdout().lines().filter_map(|l| serde_json::from_str(l).ok()).filter(|v: &serde_json::Value| v["kind"] == "management").collect();
    for action in ["session.sign_in", "credentials.create", "credentials.delete"] {
        assert!(audit.iter().any(|l| l["action"] == action && l["result"] == "allowed"), "no {action} line in the audit log");
    }
    if approval {
        assert!(audit.iter().any(|l| l["action"] == "requests.approve" && l["result"] == "allowed"));
        assert!(audit.iter().any(|l| l["action"] == "requests.approve" && l["result"] == "refused" && l["error"] == "forbidden"), "the requester's own approval was refused");
    }
    stdout
}

#[test]
fn the_console_walks_the_whole_story_in_a_real_browser() {
    ensure_browser();
    for approval in [false, true] {
        let steps = run_story(approval);
        eprintln!("--- approval: {approval} ---\n{steps}");
    }
}
