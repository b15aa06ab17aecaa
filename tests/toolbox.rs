//! The operator's toolbox through the real binary: shell completions run in real bash, zsh
//! and fish; the man pages render with groff; `serve --log-format` writes text or JSON
//! operational logs, and the audit line stays JSON in both.
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn tool(name: &str, package: &str) -> String {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().expect("run sh");
    assert!(
        found.status.success(),
        "{name} is missing: install Debian's {package} (apt-get install {package}; .ci/run does)"
    );
    String::from_utf8_lossy(&found.stdout).trim().to_string()
}

fn output(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bin(args, dir.path(), Duration::from_secs(30)).expect("portcullis runs");
    assert!(out.status.success(), "portcullis {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completes_subcommands_and_options() {
    let bash = tool("bash", "bash");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("portcullis.bash");
    std::fs::write(&script, output(&["completions", "bash"])).unwrap();
    // What bash offers after `portcullis se<TAB>` and `portcullis serve --lo<TAB>`.
    let complete = |words: &str, cur: &str| {
        run(Command::new(&bash).arg("-c").arg(format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE=\"{words}\"; COMP_POINT=${{#COMP_LINE}}; _portcullis portcullis '{cur}' x; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        )))
    };
    let subs = complete("portcullis se", "se");
    assert!(subs.lines().any(|l| l == "serve"), "{subs}");
    assert!(!subs.lines().any(|l| l == "check"), "only what starts with se: {subs}");
    let all = complete("portcullis ''", "");
    for sub in ["serve", "check", "keygen", "credentials", "explain", "schema", "completions", "man"] {
        assert!(all.split_whitespace().any(|w| w == sub), "{sub} missing: {all}");
    }
    let opts = complete("portcullis serve --lo", "--lo");
    assert!(opts.lines().any(|l| l == "--log-format"), "{opts}");
}

#[test]
fn fish_completes_subcommands_and_zsh_loads_the_script() {
    let fish = tool("fish", "fish");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("portcullis.fish");
    std::fs::write(&script, output(&["completions", "fish"])).unwrap();
    let offered = run(Command::new(&fish).arg("--no-config").arg("-c").arg(format!("source {}; complete -C 'portcullis sch'", script.display())));
    assert!(offered.lines().any(|l| l.starts_with("schema")), "{offered}");
    // An option's values (clap's fish script completes options' values, not positionals').
    let values = run(Command::new(&fish).arg("--no-config").arg("-c").arg(format!("source {}; complete -C 'portcullis serve --log-format '", script.display())));
    for v in ["auto", "json", "text"] {
        assert!(values.lines().any(|l| l.starts_with(v)), "{v} not offered: {values}");
    }

    let zsh = tool("zsh", "zsh");
    let script = dir.path().join("_portcullis");
    let text = output(&["completions", "zsh"]);
    assert!(text.starts_with("#compdef portcullis"), "{:.60}", text);
    std::fs::write(&script, &text).unwrap();
    // It parses, and compinit loads it as the completion of `portcullis`.
    run(Command::new(&zsh).arg("-n").arg(&script));
    let loaded = run(Command::new(&zsh).arg("-f").arg("-c").arg(format!(
        "fpath=({} $fpath); autoload -Uz compinit; compinit -u -D; print -r -- ${{_comps[portcullis]}}",
        dir.path().display()
    )));
    assert_eq!(loaded.trim(), "_portcullis");
}

#[test]
fn the_man_pages_render_with_groff() {
    let groff = tool("groff", "groff-base");
    let render = |page: &Path| {
        let text = run(Command::new(&groff).args(["-man", "-Tutf8", "-P", "-cbou"]).arg(page).env("LC_ALL", "C.UTF-8"));
        text
    };
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("portcullis.1");
    std::fs::write(&top, output(&["man"])).unwrap();
    let text = render(&top);
    for want in ["NAME", "portcullis - Authentication and authorization sidecar", "SYNOPSIS", "SUBCOMMANDS", "portcullis-serve(1)", "portcullis-schema(1)"] {
        assert!(text.contains(want), "{want:?} not in the rendered page:\n{text}");
    }
    let pages_dir = dir.path().join("pages");
    let listed = output(&["man", "--out-dir", pages_dir.to_str().unwrap()]);
    for page in ["portcullis.1", "portcullis-serve.1", "portcullis-completions.1", "portcullis-credentials.1"] {
        assert!(listed.contains(page), "{page} not written: {listed}");
    }
    let serve = render(&pages_dir.join("portcullis-serve.1"));
    assert!(serve.contains("--log-format") && serve.contains("--config"), "{serve}");
}

/// Runs `portcullis serve --config … <extra>` with stdout to a file until it listens, sends
/// one denied request, and returns stdout once that request's audit line is in it.
fn serve_and_log(extra: &[&str]) -> String {
    let up = Upstream::start();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!("{}routes:\n  - match: \"GET /v1/x\"\n    require: \"x:read\"\n", main_head(addr, admin, up.addr));
    let dir = write_config(&main, "api_keys: []\n");
    let stdout = dir.path().join("stdout.log");
    let mut child = Command::new(bin())
        .args(["serve", "--config", "portcullis.yaml"])
        .args(extra)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn portcullis");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "portcullis exited: {}", std::fs::read_to_string(&stdout).unwrap_or_default());
        assert!(Instant::now() < deadline, "portcullis did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = send_raw(addr, &request("GET", "/v1/x", &[]));
    assert_eq!(r.status, 401);
    let id = r.json()["request_id"].as_str().unwrap().to_string();
    let text = loop {
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        if text.contains(&id) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains(&id), "no audit line for {id}:\n{text}");
    text
}

fn audit_line(text: &str) -> serde_json::Value {
    let line = text.lines().find(|l| l.contains("\"message\":\"decision\"")).unwrap_or_else(|| panic!("no audit line:\n{text}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("the audit line is not JSON ({e}): {line}"))
}

#[test]
fn log_format_text_is_for_a_person_and_the_audit_line_stays_json() {
    let text = serve_and_log(&["--log-format", "text"]);
    let starting = text.lines().find(|l| l.contains("portcullis starting")).unwrap_or_else(|| panic!("{text}"));
    assert!(serde_json::from_str::<serde_json::Value>(starting).is_err(), "not text: {starting}");
    assert!(starting.contains(" INFO ") && starting.contains("listen="), "{starting}");
    assert!(!starting.contains('\u{1b}'), "no colour codes into a file: {starting:?}");
    assert_eq!(audit_line(&text)["reason"], "missing_credential");
}

#[test]
fn log_format_json_and_auto_off_a_terminal_write_json_lines() {
    for extra in [&["--log-format", "json"][..], &[]] {
        let text = serve_and_log(extra);
        let starting = text.lines().find(|l| l.contains("portcullis starting")).unwrap_or_else(|| panic!("{text}"));
        let v: serde_json::Value = serde_json::from_str(starting).unwrap_or_else(|e| panic!("{extra:?}: not JSON ({e}): {starting}"));
        assert_eq!(v["level"], "INFO");
        assert_eq!(audit_line(&text)["reason"], "missing_credential");
    }
}

/// On a terminal, `auto` is text: run under a pseudo-terminal by util-linux's `script`.
#[test]
fn log_format_auto_on_a_terminal_is_text() {
    let script = tool("script", "bsdutils");
    let up = Upstream::start();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = write_config(&format!("{}routes: []\n", main_head(addr, admin, up.addr)), "api_keys: []\n");
    let inner = format!("timeout -s INT 3 {} serve --config portcullis.yaml", bin());
    let out = Command::new(script).args(["-qec", &inner, "/dev/null"]).current_dir(dir.path()).stdin(Stdio::null()).output().expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    let starting = text.lines().find(|l| l.contains("portcullis starting")).unwrap_or_else(|| panic!("nothing logged on the terminal:\n{text}"));
    assert!(serde_json::from_str::<serde_json::Value>(starting.trim()).is_err(), "JSON on a terminal: {starting}");
    assert!(starting.contains("INFO"), "{starting}");
}
