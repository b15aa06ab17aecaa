//! `credentials list` and `show`: what the file holds, with each credential's state.
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::last_used::{state_path, LastUsed};

/// One credential as the file has it (the loader's own view of a client or key), with
/// its state at `now`.
type Entry<'a> = EntryRaw<'a>;

impl<'a> EntryRaw<'a> {
    fn expires_at(&self) -> Option<i64> {
        parse_expires(self.expires).ok()
    }

    /// Old secrets still accepted at `now`, with their `until`.
    fn overlapping(&self, now: i64) -> Vec<(i64, &'a str)> {
        self.previous
            .iter()
            .filter_map(|p| parse_expires(&p.until).ok().map(|t| (t, p.until.as_str())))
            .filter(|(t, _)| now < *t)
            .collect()
    }

    /// State flags, most serious first: `disabled`, `EXPIRED`, `USER MISSING`,
    /// `expires in Nd` (within 30 days), `rotating`; `active` when none.
    fn state(&self, now: i64, users: &[String]) -> Vec<String> {
        let mut s = Vec::new();
        if self.disabled {
            s.push("DISABLED".to_string());
        }
        match self.expires_at() {
            None => s.push("BAD EXPIRY".to_string()),
            Some(t) if now >= t => s.push("EXPIRED".to_string()),
            Some(t) if t - now <= EXPIRY_WARNING_SECS => {
                s.push(format!("expires in {}", human_span(t - now)))
            }
            Some(_) => {}
        }
        if let Some(u) = self.user {
            if !users.iter().any(|x| x == u) {
                s.push("USER MISSING".to_string());
            }
        }
        if let Some((t, _)) = self.overlapping(now).into_iter().max() {
            s.push(format!("rotating: old secret works until {}", rfc3339(t)));
        }
        if s.is_empty() {
            s.push("active".to_string());
        }
        s
    }

    fn access(&self) -> String {
        let mut parts: Vec<String> = self.roles.iter().map(|r| format!("role:{}", r.as_str())).collect();
        parts.extend(strings(self.permissions));
        if let Some(u) = self.user {
            parts.push(format!("user:{u}"));
        }
        if parts.is_empty() {
            "(none)".to_string()
        } else {
            parts.join(", ")
        }
    }

    fn ips(&self) -> String {
        match self.allowed_ips {
            None => "any".to_string(),
            Some(l) => strings(l).join(", "),
        }
    }

    fn json(
        &self,
        now: i64,
        users: &[String],
        effective: Option<Vec<String>>,
        last_used: Option<i64>,
    ) -> serde_json::Value {
        let mut v = json!({
            "name": self.name.as_str(),
            "kind": self.kind.json(),
            "user": self.user,
            "roles": strings(self.roles),
            "permissions": strings(self.permissions),
            "allowed_ips": self.allowed_ips.as_ref().map(|l| strings(l)),
            "expires": self.expires.as_str(),
            "expires_at": self.expires_at().map(rfc3339),
            "disabled": self.disabled,
            "expired": self.expires_at().is_none_or(|t| now >= t),
            "state": self.state(now, users),
            "description": self.description.as_deref(),
            "notes": self.notes,
            "previous_secret_until": self.overlapping(now).into_iter().max().map(|(t, _)| rfc3339(t)),
            "last_used": last_used.map(rfc3339),
        });
        if let Some(e) = effective {
            v["effective_permissions"] = json!(e);
        }
        v
    }
}

/// The last-use times the sidecar keeps beside the file (read only: the CLI never writes
/// them). A file that cannot be read is a warning on stderr and "never" for everyone.
fn last_used(loc: &Location) -> Arc<LastUsed> {
    let Some(file) = loc.store.file() else {
        // The PostgreSQL store keeps them in the database.
        return LastUsed::open_none();
    };
    let (table, problem) = LastUsed::load(state_path(file));
    if let Some(p) = problem {
        eprintln!("warning: last-use times not shown: {p}");
    }
    table
}

/// A last-use time as `list` shows it: `never`, or how long ago (`3m ago`, `2h ago`,
/// `5d ago`; to the minute, as the sidecar keeps it).
fn ago(t: Option<i64>, now: i64) -> String {
    t.map_or_else(|| "never".to_string(), |t| format!("{} ago", human_span((now - t).max(0))))
}

/// Validates the file as it is, for `list`/`show`: warnings on stderr, never fatal.
fn validated(loc: &Location, cur: &View, now: i64) -> Option<CredentialStore> {
    match loc.store.validate(cur, now) {
        Ok(store) => Some(store),
        Err(errs) => {
            eprintln!(
                "warning: the sidecar would refuse {} as it is:\n{errs}",
                loc.label()
            );
            None
        }
    }
}

pub(super) fn list(loc: &Location, output: Output, now: i64, out: &mut dyn Write) -> Res<()> {
    let cur = loc.store.read(true)?;
    let _ = validated(loc, &cur, now);
    let users: Vec<String> = cur.raw.users.iter().map(|u| u.name.to_string()).collect();
    let entries = cur.raw.entries().collect::<Vec<_>>();
    let used = last_used(loc);
    if output == Output::Json {
        let v: Vec<_> = entries.iter().map(|e| e.json(now, &users, None, used.get(e.name.as_str()))).collect();
        return emit(out, &format!("{:#}\n", serde_json::Value::Array(v)));
    }
    let mut rows = vec![
        ["NAME", "KIND", "ACCESS", "ALLOWED IPS", "EXPIRES", "LAST USED", "STATE"].map(String::from),
    ];
    for e in &entries {
        rows.push([
            e.name.to_string(),
            e.kind.label().to_string(),
            e.access(),
            e.ips(),
            e.expires.to_string(),
            ago(used.get(e.name.as_str()), now),
            e.state(now, &users).join(", "),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    let count = |f: &dyn Fn(&Entry<'_>) -> bool| entries.iter().filter(|e| f(e)).count();
    let expired = count(&|e| e.expires_at().is_none_or(|t| now >= t));
    let disabled = count(&|e| e.disabled);
    let soon = count(&|e| {
        e.expires_at()
            .is_some_and(|t| now < t && t - now <= EXPIRY_WARNING_SECS)
    });
    let _ = writeln!(
        s,
        "\n{} credential(s): {expired} expired, {disabled} disabled, {soon} expiring within 30 days",
        entries.len()
    );
    emit(out, &s)
}

pub(super) fn show(loc: &Location, name: &str, output: Output, now: i64, out: &mut dyn Write) -> Res<()> {
    let cur = loc.store.read(true)?;
    let store = validated(loc, &cur, now);
    let users: Vec<String> = cur.raw.users.iter().map(|u| u.name.to_string()).collect();
    let entries = cur.raw.entries().collect::<Vec<_>>();
    let e = entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| no_such(loc, name))?;
    let effective = store.as_ref().and_then(|s| {
        s.all.iter().find(|c| &*c.id == name).map(|c| {
            c.grants
                .iter()
                .map(|g| g.as_str().to_string())
                .collect::<Vec<_>>()
        })
    });
    let used = last_used(loc).get(e.name.as_str());
    if output == Output::Json {
        return emit(out, &format!("{:#}\n", e.json(now, &users, effective, used)));
    }
    let mut s = String::new();
    let mut row = |k: &str, v: &str| {
        let _ = writeln!(s, "{:<24}{v}", format!("{k}:"));
    };
    row("name", e.name);
    row("kind", e.kind.label());
    row("state", &e.state(now, &users).join(", "));
    let valid = e.expires_at().map_or("not a valid date".to_string(), |t| {
        format!("no longer valid from {}", rfc3339(t))
    });
    row("expires", &format!("{} ({valid})", e.expires));
    let last = used.map_or_else(|| "never".to_string(), |t| format!("{} ({})", rfc3339(t), ago(Some(t), now)));
    row("last used", &last);
    if let Some(u) = e.user {
        row("user", u);
    }
    row(
        "roles",
        &if e.roles.is_empty() {
            "(none)".to_string()
        } else {
            strings(e.roles).join(", ")
        },
    );
    row(
        "permissions",
        &if e.permissions.is_empty() {
            "(none)".to_string()
        } else {
            strings(e.permissions).join(", ")
        },
    );
    if let Some(eff) = &effective {
        row(
            "effective permissions",
            &if eff.is_empty() {
                "(none)".to_string()
            } else {
                eff.join(", ")
            },
        );
    }
    row("allowed ips", &e.ips());
    if let Some(d) = e.description {
        row("description", d);
    }
    if let Some(n) = e.notes {
        row("notes", n);
    }
    let shown_hash = if e.hash.starts_with("$argon2id$") {
        "argon2id".to_string()
    } else {
        format!("{}…", e.hash.chars().take(19).collect::<String>())
    };
    row(
        e.kind.hash_key(),
        &format!("{shown_hash} (only a hash of the secret is stored)"),
    );
    for (t, _) in e.overlapping(now) {
        row(
            "previous secret",
            &format!("still accepted until {}", rfc3339(t)),
        );
    }
    emit(out, &s)
}

