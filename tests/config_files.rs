//! Every YAML file under config/ and examples/ parses, and every portcullis config there
//! passes `portcullis check` (with a freshly generated signing key where one is named).
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
#[path = "common/pg.rs"]
mod pg;

/// A free loopback port (for the throwaway PostgreSQL of a config on that store).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn is_portcullis_config(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("listen:")) && text.lines().any(|l| l.starts_with("upstream:"))
}

#[test]
fn every_yaml_file_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    yaml_files(&root.join("config"), &mut files);
    yaml_files(&root.join("examples"), &mut files);
    assert!(!files.is_empty());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let docs: Result<Vec<serde_json::Value>, _> = serde_saphyr::from_str_multiple(&text);
        assert!(docs.is_ok(), "{}: {:?}", f.display(), docs.err());
    }
}

#[test]
fn every_portcullis_config_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let mut files = Vec::new();
    yaml_files(&root.join("config"), &mut files);
    yaml_files(&root.join("examples"), &mut files);
    let mut checked = 0;
    let mut database: Option<pg::Pg> = None;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if !is_portcullis_config(&text) {
            continue;
        }
        // Work on a copy, so keys generated for the check never land in the tree.
        let tmp = tempfile::tempdir().unwrap();
        let dir = f.parent().unwrap();
        copy_dir(dir, tmp.path());
        let cfg = tmp.path().join(f.file_name().unwrap());
        let raw: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        if let Some(key) = raw.get("tokens").and_then(|t| t.get("signing_key")).and_then(|k| k.as_str()) {
            let key_path = tmp.path().join(key);
            if !key_path.exists() {
                let st = Command::new(bin).args(["keygen", "--out"]).arg(&key_path).status().unwrap();
                assert!(st.success());
            }
        }
        // Likewise a self-signed TLS pair where `tls:` (or `management.tls:`) names files
        // that are not there.
        for tls in [raw.get("tls"), raw.get("management").and_then(|m| m.get("tls"))].into_iter().flatten() {
            let (cert, key) = (tls["cert"].as_str().unwrap(), tls["key"].as_str().unwrap());
            let (cert, key) = (tmp.path().join(cert), tmp.path().join(key));
            if !cert.exists() {
                std::fs::create_dir_all(cert.parent().unwrap()).unwrap();
                std::fs::create_dir_all(key.parent().unwrap()).unwrap();
                let st = Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .output()
                    .expect("openssl must be installed");
                assert!(st.status.success());
            }
        }
        let mut check = Command::new(bin);
        check.args(["check", "--config"]).arg(&cfg);
        // A config on the PostgreSQL store is checked against a real, migrated database.
        if raw.get("store").and_then(|st| st.get("kind")).and_then(|k| k.as_str()) == Some("postgres") {
            let pg = database.get_or_insert_with(pg::Pg::start);
            let var = raw["store"]["url_env"].as_str().expect("the examples take the URL from the environment");
            let migrate = Command::new(bin).args(["store", "migrate", "--config"]).arg(&cfg).env(var, pg.url()).output().unwrap();
            assert!(migrate.status.success(), "store migrate for {}: {}", f.display(), String::from_utf8_lossy(&migrate.stderr));
            check.env(var, pg.url());
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "{} does not pass check:\n{}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1, "no portcullis config found under config/ or examples/");
}

#[test]
fn check_fails_on_a_bad_config_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("portcullis.yaml");
    std::fs::write(&cfg, "listen: \"127.0.0.1:1\"\nupstream: \"127.0.0.1:2\"\nroutes:\n  - match: \"GET /a\"\n    requires: \"x:read\"\n").unwrap();
    std::fs::write(tmp.path().join("credentials.yaml"), "api_keys: []\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["check", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("portcullis.yaml:5"), "{text}");
    assert!(text.contains("requires"), "{text}");
}
