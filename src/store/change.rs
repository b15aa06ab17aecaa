//! One typed change to the credentials, applied to a [`View`] of the file: the parsed
//! document after the change, and the file's text edited in place (comments and layout
//! kept) where the editor understands the layout. Pure: no I/O.
use serde_json::{Map, Value};

use super::file::View;
use super::yaml::{date_scalar, flow_list, quoted, scalar};
use super::{edit, span, Kind};
use crate::config::raw::CredentialsRaw;
use crate::config::validate::parse_expires;

/// A credential to add. Its secret is already hashed: a store never sees a secret.
#[derive(Debug, Clone, Default)]
pub struct NewEntry {
    pub name: String,
    pub hash: String,
    pub user: Option<String>,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub allowed_ips: Vec<String>,
    /// As the file writes it: a date (`2027-06-30`) or an RFC 3339 time.
    pub expires: String,
    pub description: Option<String>,
    pub notes: Option<String>,
    /// Set by the management API: when (RFC 3339) and by whom.
    pub created_at: Option<String>,
    pub created_by: Option<String>,
}

/// The editable fields of a credential (SPEC §9: its name and expiry are fixed at
/// creation). `None` leaves a field as it is; for the optional fields `Some(None)` removes
/// it (`allowed_ips: Some(None)`: every address).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryEdit {
    pub roles: Option<Vec<String>>,
    pub permissions: Option<Vec<String>>,
    pub allowed_ips: Option<Option<Vec<String>>>,
    pub description: Option<Option<String>>,
    pub notes: Option<Option<String>>,
}

impl EntryEdit {
    pub fn is_empty(&self) -> bool {
        *self == EntryEdit::default()
    }
}

/// What one write does.
#[derive(Debug, Clone)]
pub enum Change {
    Create { kind: Kind, entry: NewEntry },
    /// New roles, permissions, allowlist, description or notes for the named credential.
    Edit { name: String, edit: EntryEdit },
    /// Disable (`true`) or enable (`false`) the named credential.
    SetDisabled { name: String, disabled: bool },
    Delete { name: String },
    /// A new hash for the named credential. With `overlap_until` (unix seconds) the old
    /// hash keeps working until then, and older ones still inside their own overlap stay;
    /// without, every old hash stops at once (a rotation after a leak).
    Rotate { name: String, hash: String, overlap_until: Option<i64> },
}

impl Change {
    /// The credential the change is about.
    pub fn name(&self) -> &str {
        match self {
            Change::Create { entry, .. } => &entry.name,
            Change::Edit { name, .. }
            | Change::SetDisabled { name, .. }
            | Change::Delete { name }
            | Change::Rotate { name, .. } => name,
        }
    }
}

/// Where `name` is in the file: its kind and its index in its section.
pub fn locate(raw: &CredentialsRaw, name: &str) -> Option<(Kind, usize)> {
    if let Some(i) = raw.clients.iter().position(|c| c.id == name) {
        return Some((Kind::Client, i));
    }
    raw.api_keys.iter().position(|k| k.name == name).map(|i| (Kind::ApiKey, i))
}

fn vstr(s: &str) -> Value {
    Value::String(s.to_string())
}

fn vlist(items: &[String]) -> Value {
    Value::Array(items.iter().map(|s| vstr(s)).collect())
}

/// The top-level sequence `key` of the document, made if absent (or null).
fn section_seq<'v>(doc: &'v mut Value, key: &str) -> Result<&'v mut Vec<Value>, String> {
    if doc.is_null() {
        *doc = Value::Object(Map::new());
    }
    let map = doc.as_object_mut().ok_or("the credentials file is not a YAML mapping")?;
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().ok_or_else(|| format!("{key} is not a list"))
}

/// The parsed entry at `idx` of `kind`'s section.
fn entry_value(doc: &mut Value, kind: Kind, idx: usize) -> Result<&mut Map<String, Value>, String> {
    section_seq(doc, kind.section())?
        .get_mut(idx)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{}: entry {idx} is not a mapping", kind.section()))
}

/// Applies `change` to `view` at `now`: the document after it, and the edited text
/// (`None` where the text could not be edited in place).
pub fn apply(view: &View, change: &Change, now: i64) -> Result<(Value, Option<String>), String> {
    let text = view.text.as_deref().unwrap_or("");
    let mut value = view.value.clone();
    let found = || locate(&view.raw, change.name()).ok_or_else(|| format!("no client or API key named {:?}", change.name()));
    match change {
        Change::Create { kind, entry } => {
            let e = entry;
            // The entry, as text lines (key, value) and as the parsed value the loader sees.
            let mut fields: Vec<(&str, String, Value)> =
                vec![(kind.name_key(), scalar(&e.name), vstr(&e.name)), (kind.hash_key(), quoted(&e.hash), vstr(&e.hash))];
            if let Some(u) = &e.user {
                fields.push(("user", scalar(u), vstr(u)));
            }
            for (key, list) in [("roles", &e.roles), ("permissions", &e.permissions), ("allowed_ips", &e.allowed_ips)] {
                if !list.is_empty() {
                    fields.push((key, flow_list(list), vlist(list)));
                }
            }
            fields.push(("expires", date_scalar(&e.expires), vstr(&e.expires)));
            if let Some(d) = &e.description {
                fields.push(("description", quoted(d), vstr(d)));
            }
            if let Some(n) = &e.notes {
                fields.push(("notes", quoted(n), vstr(n)));
            }
            for (key, v) in [("created_at", &e.created_at), ("created_by", &e.created_by)] {
                if let Some(v) = v {
                    fields.push((key, quoted(v), vstr(v)));
                }
            }
            let entry: Map<String, Value> = fields.iter().map(|(k, _, v)| (k.to_string(), v.clone())).collect();
            section_seq(&mut value, kind.section())?.push(Value::Object(entry));
            let pairs: Vec<(String, String)> = fields.iter().map(|(k, t, _)| (k.to_string(), t.clone())).collect();
            Ok((value, edit::append_item(text, kind.section(), &pairs)))
        }
        Change::Edit { edit: ed, .. } => {
            let (kind, idx) = found()?;
            let entry = entry_value(&mut value, kind, idx)?;
            // (key, the value's one line of text, the parsed value); `None`: remove the key.
            let mut sets: Vec<(&str, Option<(String, Value)>)> = Vec::new();
            let list = |l: &Vec<String>| (!l.is_empty()).then(|| (flow_list(l), vlist(l)));
            if let Some(l) = &ed.roles {
                sets.push(("roles", list(l)));
            }
            if let Some(l) = &ed.permissions {
                sets.push(("permissions", list(l)));
            }
            if let Some(ips) = &ed.allowed_ips {
                // An empty list is the loader's error, not "every address": keep it as given.
                sets.push(("allowed_ips", ips.as_ref().map(|l| (flow_list(l), vlist(l)))));
            }
            for (key, v) in [("description", &ed.description), ("notes", &ed.notes)] {
                if let Some(v) = v {
                    sets.push((key, v.as_ref().map(|d| (quoted(d), vstr(d)))));
                }
            }
            let mut text = Some(text.to_string());
            for (key, v) in sets {
                text = text.and_then(|t| match &v {
                    Some((line, _)) => edit::set_key(&t, kind.section(), idx, key, std::slice::from_ref(line)),
                    None => edit::remove_key(&t, kind.section(), idx, key),
                });
                match v {
                    Some((_, parsed)) => entry.insert(key.to_string(), parsed),
                    None => entry.remove(key),
                };
            }
            Ok((value, text))
        }
        Change::SetDisabled { disabled, .. } => {
            let (kind, idx) = found()?;
            entry_value(&mut value, kind, idx)?.insert("disabled".into(), Value::Bool(*disabled));
            Ok((value, edit::set_key(text, kind.section(), idx, "disabled", &[disabled.to_string()])))
        }
        Change::Delete { .. } => {
            let (kind, idx) = found()?;
            section_seq(&mut value, kind.section())?.remove(idx);
            Ok((value, edit::remove_item(text, kind.section(), idx)))
        }
        Change::Rotate { hash, overlap_until, .. } => {
            let (kind, idx) = found()?;
            let (old_hash, previous) = match kind {
                Kind::Client => (&view.raw.clients[idx].secret_hash, &view.raw.clients[idx].previous_secret_hashes),
                Kind::ApiKey => (&view.raw.api_keys[idx].key_hash, &view.raw.api_keys[idx].previous_key_hashes),
            };
            let mut keep: Vec<(String, String)> = Vec::new();
            if let Some(until) = overlap_until {
                for p in previous {
                    if parse_expires(&p.until).is_ok_and(|t| now < t) {
                        keep.push((p.hash.clone(), p.until.clone()));
                    }
                }
                keep.push((old_hash.to_string(), span::rfc3339(*until)));
            }
            let entry = entry_value(&mut value, kind, idx)?;
            entry.insert(kind.hash_key().into(), vstr(hash));
            let prev_key = kind.previous_key().to_string();
            if keep.is_empty() {
                entry.remove(&prev_key);
            } else {
                let list = keep
                    .iter()
                    .map(|(h, u)| Value::Object([("hash".to_string(), vstr(h)), ("until".to_string(), vstr(u))].into_iter().collect()))
                    .collect();
                entry.insert(prev_key, Value::Array(list));
            }
            let text = edit::set_key(text, kind.section(), idx, kind.hash_key(), &[quoted(hash)]).and_then(|t| {
                if keep.is_empty() {
                    edit::remove_key(&t, kind.section(), idx, kind.previous_key())
                } else {
                    let lines: Vec<String> =
                        keep.iter().map(|(h, u)| format!("  - {{hash: {}, until: {}}}", quoted(h), date_scalar(u))).collect();
                    edit::set_key(&t, kind.section(), idx, kind.previous_key(), &[String::new()])
                        .and_then(|t| edit::set_block(&t, kind.section(), idx, kind.previous_key(), &lines))
                }
            });
            Ok((value, text))
        }
    }
}
