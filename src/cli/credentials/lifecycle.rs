//! `credentials disable`, `enable`, `edit`, `delete` and `rotate`: one typed change each.
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

use serde_json::json;

use super::create::{allow_ips, curl_line, try_it};
use crate::store::EntryEdit;
use super::*;

/// Where `name` is: its kind and its index in its section.
fn locate(cur: &View, loc: &Location, name: &str) -> Res<(Kind, usize)> {
    change::locate(&cur.raw, name).ok_or_else(|| no_such(loc, name))
}

pub(super) fn set_disabled(
    loc: &Location,
    name: &str,
    disabled: bool,
    now: i64,
    out: &mut dyn Write,
) -> Res<()> {
    let cur = loc.store.read(true)?;
    let (kind, idx) = locate(&cur, loc, name)?;
    let was = match kind {
        Kind::Client => cur.raw.clients[idx].disabled,
        Kind::ApiKey => cur.raw.api_keys[idx].disabled,
    };
    let verb = if disabled { "disabled" } else { "enabled" };
    if was == disabled {
        return emit(
            out,
            &format!(
                "{} {name:?} is already {verb}; nothing to do\n",
                kind.label()
            ),
        );
    }
    let change = Change::SetDisabled { name: name.to_string(), disabled };
    note_comments_lost(loc, loc.store.apply(&change, Some(cur.version), now)?.comments_kept);
    let effect = match (kind, disabled) {
        (Kind::ApiKey, true) => "the key is rejected at once".to_string(),
        (Kind::Client, true) => {
            let revoke = loc.main.as_ref().is_some_and(|m| m.revoke_on_disable);
            if revoke {
                "it gets no new tokens, and its tokens are rejected at once (tokens.revoke_on_disable)".to_string()
            } else {
                "it gets no new tokens; tokens already issued keep working until they expire"
                    .to_string()
            }
        }
        (_, false) => "it works again".to_string(),
    };
    emit(
        out,
        &format!(
            "{} {name:?} {verb} in {}: {effect} (a running sidecar applies it within a second)\n",
            kind.label(),
            loc.label()
        ),
    )
}

pub(super) fn edit(loc: &Location, a: &EditArgs, now: i64, out: &mut dyn Write) -> Res<()> {
    let list = |given: &[String], clear: bool| (clear || !given.is_empty()).then(|| given.iter().map(|s| s.trim().to_string()).collect());
    let allowed_ips = if a.all_ips {
        if loc.store.env() == Environment::Production {
            return Err("--all-ips: in production every credential must list the addresses it may be used from".into());
        }
        Some(None)
    } else if a.allow_ips.is_empty() {
        None
    } else {
        Some(Some(allow_ips(&a.allow_ips, loc.store.env())?))
    };
    let optional = |v: &Option<String>, clear: bool| if clear { Some(None) } else { v.clone().map(Some) };
    let edit = EntryEdit {
        roles: list(&a.roles, a.clear_roles),
        permissions: list(&a.permissions, a.clear_permissions),
        allowed_ips,
        description: optional(&a.description, a.clear_description),
        notes: optional(&a.notes, a.clear_notes),
    };
    if edit.is_empty() {
        return Err("nothing to change: give --role, --permission, --allow-ip, --all-ips, --description or --notes (or a --clear-… option)".into());
    }
    let cur = loc.store.read(true)?;
    let (kind, _) = locate(&cur, loc, &a.name)?;
    let change = Change::Edit { name: a.name.clone(), edit };
    let applied = loc.store.apply(&change, Some(cur.version), now)?;
    note_comments_lost(loc, applied.comments_kept);
    let grants = applied.store.grants_of(&a.name).iter().map(|g| g.as_str()).collect::<Vec<_>>().join(", ");
    emit(
        out,
        &format!(
            "edited {} {:?} in {} (a running sidecar applies it within a second)\n  effective permissions: {}\n",
            kind.label(),
            a.name,
            loc.label(),
            if grants.is_empty() { "(none)" } else { &grants }
        ),
    )
}

pub(super) fn delete(loc: &Location, name: &str, yes: bool, now: i64, out: &mut dyn Write) -> Res<()> {
    let cur = loc.store.read(true)?;
    let (kind, _) = locate(&cur, loc, name)?;
    if !yes {
        confirm(&format!(
            "Delete {} {name:?} from {}? Requests using it are rejected at once{}. This cannot be undone. [y/N] ",
            kind.label(),
            loc.label(),
            if kind == Kind::Client { ", its tokens included" } else { "" }
        ))?;
    }
    let change = Change::Delete { name: name.to_string() };
    note_comments_lost(loc, loc.store.apply(&change, Some(cur.version), now)?.comments_kept);
    emit(
        out,
        &format!("deleted {} {name:?} from {}\n", kind.label(), loc.label()),
    )
}

/// Asks on the terminal; refuses when there is none.
fn confirm(question: &str) -> Res<()> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "not deleting: there is no terminal to confirm on; pass --yes to delete without asking"
                .into(),
        );
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err("not deleted".into())
    }
}

/// Longest `--overlap`: an old secret that lives on for longer is not rotated away.
const MAX_OVERLAP_SECS: i64 = 30 * 86_400;

pub(super) fn rotate(
    loc: &Location,
    name: &str,
    overlap: Option<&str>,
    output: Output,
    now: i64,
    out: &mut dyn Write,
) -> Res<()> {
    let until = match overlap {
        None => None,
        Some(o) => {
            let (n, unit) = parse_span(o, "--overlap")?;
            let secs = span_secs(n, unit);
            if secs > MAX_OVERLAP_SECS {
                return Err(format!("--overlap {o}: at most 30d").into());
            }
            Some(now + secs)
        }
    };
    let cur = loc.store.read(true)?;
    let (kind, _) = locate(&cur, loc, name)?;
    let secret = new_secret(kind, loc.store.env());
    let hash = hash_secret(kind, &secret)?;
    let change = Change::Rotate { name: name.to_string(), hash, overlap_until: until };
    let applied = loc.store.apply(&change, Some(cur.version), now)?;
    note_comments_lost(loc, applied.comments_kept);
    let store = applied.store;

    let grants = store.grants_of(name);
    let curl = curl_line(loc, kind, name, &secret, &grants);
    let old_until = until.map(rfc3339);
    if output == Output::Json {
        let v = json!({
            "kind": kind.json(), "name": name, "secret": secret, "previous_secret_until": old_until,
            "file": loc.label(), "curl": curl,
        });
        return emit(out, &format!("{v:#}\n"));
    }
    let mut s = String::new();
    let _ = writeln!(s, "Rotated {} {name:?} in {}.", kind.label(), loc.label());
    let _ = writeln!(s, "\n    {secret}\n");
    let _ = writeln!(
        s,
        "This is the only time the new secret is shown: store it now."
    );
    match &old_until {
        Some(t) => {
            let _ = writeln!(
                s,
                "The old secret keeps working until {t}; deploy the new one before then."
            );
        }
        None => {
            let _ = writeln!(s, "The old secret stops working as soon as a running sidecar reloads (within a second).");
        }
    }
    if kind == Kind::Client {
        let _ = writeln!(s, "Tokens already issued keep working until they expire.");
    }
    s.push_str(&try_it(kind, &curl));
    emit(out, &s)
}
