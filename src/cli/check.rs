//! `portcullis check`: validate everything, print a summary and warnings.
use std::io::Write;
use std::path::Path;

use crate::config::{self, CredentialKind, Snapshot};

/// Runs the check; returns the process exit code (0 = valid; 1 = errors, or warnings
/// with `strict`).
pub fn run(path: &Path, strict: bool, out: &mut dyn Write) -> i32 {
    // Validation, then the one look-up a server would make before serving (the
    // upstream's name); the JWKS URLs are not fetched.
    match config::load(path, config::unix_now()).and_then(|mut s| config::resolve(&mut s).map(|()| s)) {
        Err(errs) => {
            let _ = writeln!(out, "{errs}");
            let _ = writeln!(out, "config is NOT valid: {} error(s)", errs.0.len());
            1
        }
        Ok(snap) => {
            let _ = write!(out, "{}", summary(&snap));
            for w in &snap.warnings {
                let _ = writeln!(out, "warning: {w}");
            }
            if strict && !snap.warnings.is_empty() {
                let _ = writeln!(out, "config has {} warning(s) and --strict is set", snap.warnings.len());
                1
            } else {
                let _ = writeln!(out, "config is valid");
                0
            }
        }
    }
}

/// A few lines describing what a snapshot holds.
pub fn summary(snap: &Snapshot) -> String {
    let count = |k| snap.credentials.all.iter().filter(|c| c.kind == k).count();
    let public = snap.routes.routes.iter().filter(|r| r.public).count();
    format!(
        "listen {} -> upstream {} ({:?})\nroutes: {} ({} public)\nclients: {}, api keys: {}, users: {}, custom roles: {}\ntoken endpoint: {}\n",
        snap.settings.listen,
        snap.settings.upstream_text,
        snap.settings.environment,
        snap.routes.routes.len(),
        public,
        count(CredentialKind::Client),
        count(CredentialKind::ApiKey),
        snap.credentials.users.len(),
        snap.credentials.custom_roles.len(),
        snap.tokens.as_ref().map_or("off".to_string(), |t| t.endpoint.clone()),
    )
}
