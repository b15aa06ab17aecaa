//! Config loading. Byte 0 picks the mode:
//! even: the rest is a credentials file for `credentials_from_text` (bit 1: production).
//! odd:  the rest is the main config file, loaded with `config::load` from a scratch dir
//!       holding the fixture's credentials, signing key and JWKS file.
//!
//! Before `load`, the harness parses the main file itself (as `load` does) and skips
//! inputs that would make `load` leave the scratch dir or the machine: an `upstream` that
//! is not an IP:port literal (a DNS lookup), a `jwks_url` (a process-wide background
//! fetcher), or a file path that is absolute or has a `..` component.
#![no_main]
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{credentials_from_text, load, raw::MainRaw, Environment};
use portcullis_fuzz::{fixture, scratch_dir, write_fixture_files, NOW};

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let f = fixture();
        let d = scratch_dir("config");
        write_fixture_files(&d, &f.own_pem, &f.idp_jwks);
        d
    })
}

fn local(p: &str) -> bool {
    let p = Path::new(p);
    p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn safe_to_load(text: &str) -> bool {
    let mut options = serde_saphyr::Options::default();
    options.budget = None;
    let Ok(raw) = serde_saphyr::from_str_with_options::<MainRaw>(text, options) else {
        return true; // load fails at the same parse
    };
    if raw.upstream.parse::<SocketAddr>().is_err() {
        return false;
    }
    let mut paths: Vec<&str> = raw.credentials_file.iter().map(String::as_str).collect();
    if let Some(t) = &raw.tls {
        paths.extend([t.cert.as_str(), t.key.as_str()]);
    }
    if let Some(u) = &raw.upstream_tls {
        paths.extend(u.ca.as_deref());
    }
    if let Some(t) = &raw.tokens {
        paths.extend(t.signing_key.as_deref());
        for e in &t.external_issuers {
            if e.jwks_url.is_some() {
                return false;
            }
            paths.extend(e.jwks_file.as_deref());
        }
    }
    paths.into_iter().all(local)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if mode & 1 == 0 {
        let env = if mode & 2 != 0 { Environment::Production } else { Environment::Sandbox };
        let _ = credentials_from_text(Path::new("credentials.yaml"), text, env, NOW);
    } else {
        if !safe_to_load(text) {
            return;
        }
        let path = dir().join("main.yaml");
        std::fs::write(&path, text).expect("write main.yaml");
        let _ = load(&path, NOW);
    }
});
