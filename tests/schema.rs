//! The JSON Schemas of the config files (`portcullis schema main|credentials`): the
//! committed copies under `schema/` are what the binary prints, every shipped portcullis
//! config and credentials file names its schema on its first line and is valid against it
//! by a real validator (python-jsonschema, tests/validate_config_schema.py), and the schema
//! refuses what the loader refuses for its shape (an unknown field, a wrong name or type).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

const MODELINE: &str = "# yaml-language-server: $schema=";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Makes sure jsonschema and PyYAML import, installing tests/requirements.txt with pip if
/// they do not; fails (never skips) when that cannot be done.
fn ensure_validator() {
    let import = || {
        Command::new("python3")
            .args(["-c", "import jsonschema, yaml"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 (needed for tests/validate_config_schema.py): {e}"))
    };
    if import().status.success() {
        return;
    }
    let req = root().join("tests/requirements.txt");
    let pip = Command::new("python3").args(["-m", "pip", "install", "--quiet", "-r"]).arg(&req).output().expect("run pip");
    assert!(pip.status.success(), "pip install -r {} failed:\n{}", req.display(), String::from_utf8_lossy(&pip.stderr));
    let again = import();
    assert!(again.status.success(), "jsonschema/PyYAML still do not import:\n{}", String::from_utf8_lossy(&again.stderr));
}

/// Runs the validator on `files` (extra `args` first); its exit status and output.
fn validate(args: &[&str], files: &[PathBuf]) -> (bool, String) {
    ensure_validator();
    let out = Command::new("python3")
        .arg(root().join("tests/validate_config_schema.py"))
        .args(args)
        .args(files)
        .current_dir(root())
        .output()
        .expect("run tests/validate_config_schema.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// The shipped main configs and the credentials files they name (by `credentials_file`,
/// default `credentials.yaml` beside them).
fn shipped_configs() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = Vec::new();
    yaml_files(&root().join("config"), &mut files);
    yaml_files(&root().join("examples"), &mut files);
    let mut mains = Vec::new();
    let mut credentials = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if !(text.lines().any(|l| l.starts_with("listen:")) && text.lines().any(|l| l.starts_with("upstream:"))) {
            continue;
        }
        if text.lines().any(|l| l.trim() == "kind: postgres") {
            // Its credentials live in the database (SPEC §10): no file to pair it with.
            mains.push(f);
            continue;
        }
        let named = text
            .lines()
            .find_map(|l| l.strip_prefix("credentials_file:"))
            .map(|v| v.split('#').next().unwrap_or("").trim().trim_matches('"').to_string())
            .unwrap_or_else(|| "credentials.yaml".into());
        credentials.push(f.parent().unwrap().join(named));
        mains.push(f);
    }
    (mains, credentials)
}

#[test]
fn the_committed_schemas_are_what_portcullis_schema_prints() {
    let dir = tempfile::tempdir().unwrap();
    for (which, file) in [("main", "portcullis.schema.json"), ("credentials", "credentials.schema.json")] {
        let out = run_bin(&["schema", which], dir.path(), Duration::from_secs(30)).expect("portcullis schema runs");
        assert!(out.status.success(), "portcullis schema {which}: {}", String::from_utf8_lossy(&out.stderr));
        let printed = String::from_utf8(out.stdout).unwrap();
        let committed = std::fs::read_to_string(root().join("schema").join(file)).unwrap();
        assert!(
            printed == committed,
            "schema/{file} is not what `portcullis schema {which}` prints: run `cargo run -- schema {which} > schema/{file}`"
        );
        let v: serde_json::Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    }
    let out = run_bin(&["schema", "nonsense"], dir.path(), Duration::from_secs(30)).unwrap();
    assert!(!out.status.success());
}

#[test]
fn every_shipped_config_names_its_schema_on_its_first_line_and_is_valid_against_it() {
    let (mains, credentials) = shipped_configs();
    assert!(mains.len() >= 3 && credentials.len() >= 3, "{mains:?} {credentials:?}");
    for (files, schema) in [(&mains, "portcullis.schema.json"), (&credentials, "credentials.schema.json")] {
        for f in files.iter() {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let first = text.lines().next().unwrap_or("");
            let named = first.strip_prefix(MODELINE).unwrap_or_else(|| panic!("{} does not start with {MODELINE}…", f.display()));
            let target = f.parent().unwrap().join(named);
            assert!(
                target.canonicalize().ok() == root().join("schema").join(schema).canonicalize().ok(),
                "{}: {named} is not schema/{schema}",
                f.display()
            );
        }
    }
    // Only portcullis files carry it: not Kubernetes manifests, not Prometheus rules.
    let mut all = Vec::new();
    yaml_files(&root().join("config"), &mut all);
    yaml_files(&root().join("examples"), &mut all);
    for f in all.iter().filter(|f| !mains.contains(f) && !credentials.contains(f)) {
        assert!(!std::fs::read_to_string(f).unwrap().starts_with(MODELINE), "{} is not a portcullis config", f.display());
    }
    let files: Vec<PathBuf> = mains.iter().chain(credentials.iter()).cloned().collect();
    let (ok, out) = validate(&[], &files);
    assert!(ok, "a shipped file is not valid against its schema:\n{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), files.len(), "{out}");
}

/// What the schema must refuse (each also refused by `portcullis check`), and what it must
/// accept: a minimal config as the tests write them.
#[test]
fn the_schema_refuses_a_wrong_shape_and_accepts_a_minimal_config() {
    let dir = tempfile::tempdir().unwrap();
    let head = "listen: \"127.0.0.1:8080\"\nupstream: \"127.0.0.1:3000\"\n";
    let creds = &format!("api_keys:\n  - name: k\n    key_hash: \"{}\"\n    expires: 2099-01-01\n", sha256_hash("k"));
    let mains = [
        ("unknown-field.yaml", format!("{head}listne: \"x\"\n")),
        ("no-upstream.yaml", "listen: \"127.0.0.1:8080\"\n".to_string()),
        ("environment.yaml", format!("{head}environment: prod\n")),
        ("mode.yaml", format!("{head}routes:\n  - match: \"GET /x\"\n    public: true\n    mode: audit\n")),
        ("grace.yaml", format!("{head}shutdown_grace: ten\n")),
        ("store.yaml", format!("{head}store: {{kind: sqlite}}\n")),
        ("route-field.yaml", format!("{head}routes:\n  - match: \"GET /x\"\n    requires: \"a:read\"\n")),
    ];
    let bad_creds = [
        ("no-expires.yaml", creds.replace("    expires: 2099-01-01\n", "")),
        ("short-description.yaml", format!("{creds}    description: abc\n")),
        ("seven-ips.yaml", format!("{creds}    allowed_ips: [10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5, 10.0.0.6, 10.0.0.7]\n")),
        ("bad-name.yaml", creds.replace("name: k", "name: \"-k\"")),
        ("unknown-section.yaml", format!("{creds}keys: []\n")),
    ];
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let main_schema = root().join("schema/portcullis.schema.json");
    let creds_schema = root().join("schema/credentials.schema.json");
    let bad: Vec<PathBuf> = mains.iter().map(|(n, t)| write(n, t)).collect();
    let (ok, out) = validate(&["--expect-invalid", "--schema", main_schema.to_str().unwrap()], &bad);
    assert!(ok, "the main schema accepts a wrong shape:\n{out}");
    let bad: Vec<PathBuf> = bad_creds.iter().map(|(n, t)| write(n, t)).collect();
    let (ok, out) = validate(&["--expect-invalid", "--schema", creds_schema.to_str().unwrap()], &bad);
    assert!(ok, "the credentials schema accepts a wrong shape:\n{out}");

    // The loader refuses them too (the schema is no stricter than portcullis).
    std::fs::write(dir.path().join("credentials.yaml"), creds).unwrap();
    for (name, _) in &mains {
        let out = run_bin(&["check", "--config", name], dir.path(), Duration::from_secs(30)).expect("check runs");
        assert!(!out.status.success(), "portcullis check accepts {name}, which the schema refuses");
    }
    for (name, _) in &bad_creds {
        write("with-creds.yaml", &format!("{head}credentials_file: {name}\n"));
        let out = run_bin(&["check", "--config", "with-creds.yaml"], dir.path(), Duration::from_secs(30)).expect("check runs");
        assert!(!out.status.success(), "portcullis check accepts {name}, which the schema refuses");
    }

    // A minimal pair the loader accepts is valid.
    let m = write("minimal.yaml", &format!("{head}routes:\n  - match: \"GET /x\"\n    require: \"x:read\"\n"));
    let c = write("credentials.yaml", &format!("{creds}    roles: [wallets]\n    description: \"Five+ chars\"\n"));
    let out = run_bin(&["check", "--config", "minimal.yaml"], dir.path(), Duration::from_secs(30)).expect("check runs");
    assert!(out.status.success(), "minimal config: {}", String::from_utf8_lossy(&out.stdout));
    let (ok, out) = validate(&["--schema", main_schema.to_str().unwrap()], &[m]);
    assert!(ok, "{out}");
    let (ok, out) = validate(&["--schema", creds_schema.to_str().unwrap()], &[c]);
    assert!(ok, "{out}");
}
