//! One credential as a flat row: the shape a database holds, and a bridge to and from the
//! raw structs of the credentials file (what `store export` writes, what an entry's ETag is
//! taken over). Shared by the PostgreSQL backend and the management API.
use serde_json::{json, Value};

use super::Kind;
use crate::config::raw::{ApiKeyRaw, At, ClientRaw, CredentialsRaw, PreviousHashRaw};

/// One credential as a row.
#[derive(Debug, Clone)]
pub struct CredRow {
    pub name: String,
    pub kind: Kind,
    pub hash: String,
    pub previous: Vec<(String, String)>,
    pub user: Option<String>,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    pub allowed_ips: Option<Vec<String>>,
    pub expires: String,
    pub disabled: bool,
    pub description: Option<String>,
    pub notes: Option<String>,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
}

pub(crate) fn previous_json(p: &[(String, String)]) -> Value {
    Value::Array(p.iter().map(|(h, u)| json!({"hash": h, "until": u})).collect())
}

pub(crate) fn placed(list: &[String]) -> Vec<At<String>> {
    list.iter().map(|s| At::new(s.clone())).collect()
}

/// Adds `r` to `raw` as the file would hold it.
pub fn push_row(raw: &mut CredentialsRaw, r: &CredRow) {
    push_owned(raw, r.clone());
}

fn owned(list: Vec<String>) -> Vec<At<String>> {
    list.into_iter().map(At::new).collect()
}

/// Adds `r` to `raw`, moving its strings (the bulk read: no copy per field).
pub fn push_owned(raw: &mut CredentialsRaw, r: CredRow) {
    let previous: Vec<PreviousHashRaw> = r.previous.into_iter().map(|(h, u)| PreviousHashRaw { hash: At::new(h), until: At::new(u) }).collect();
    let allowed_ips = r.allowed_ips.map(|l| At::new(owned(l)));
    let (roles, permissions, expires, description) = (owned(r.roles), owned(r.permissions), At::new(r.expires), r.description.map(At::new));
    match r.kind {
        Kind::Client => raw.clients.push(ClientRaw {
            id: At::new(r.name),
            secret_hash: At::new(r.hash),
            previous_secret_hashes: previous,
            roles,
            permissions,
            allowed_ips,
            expires,
            disabled: r.disabled,
            description,
            notes: r.notes,
            created_at: r.created_at,
            created_by: r.created_by,
        }),
        Kind::ApiKey => raw.api_keys.push(ApiKeyRaw {
            name: At::new(r.name),
            key_hash: At::new(r.hash),
            previous_key_hashes: previous,
            user: r.user,
            roles,
            permissions,
            allowed_ips,
            expires,
            disabled: r.disabled,
            description,
            notes: r.notes,
            created_at: r.created_at,
            created_by: r.created_by,
        }),
    }
}

/// The row of credential `name` in `raw` (a linear search: for one name).
pub fn row_in(raw: &CredentialsRaw, name: &str) -> Option<CredRow> {
    raw.entries().find(|e| *e.name == name).map(|e| entry_row(&e))
}

/// One entry of the file as a row.
pub fn entry_row(e: &crate::config::raw::EntryRaw<'_>) -> CredRow {
    CredRow {
        name: e.name.to_string(),
        kind: e.kind,
        hash: e.hash.to_string(),
        previous: e.previous.iter().map(|p| (p.hash.to_string(), p.until.to_string())).collect(),
        user: e.user.map(str::to_string),
        roles: crate::config::raw::strings(e.roles),
        permissions: crate::config::raw::strings(e.permissions),
        allowed_ips: e.allowed_ips.as_ref().map(|l| crate::config::raw::strings(l)),
        expires: e.expires.to_string(),
        disabled: e.disabled,
        description: e.description.as_deref().cloned(),
        notes: e.notes.map(str::to_string),
        created_at: e.created_at.map(str::to_string),
        created_by: e.created_by.map(str::to_string),
    }
}

/// The credentials file's document for `raw` (what `store export` prints).
pub fn file_value(raw: &CredentialsRaw) -> Value {
    let s = crate::config::raw::strings;
    let mut doc = serde_json::Map::new();
    if !raw.roles.is_empty() {
        doc.insert("roles".into(), Value::Object(raw.roles.iter().map(|(n, p)| (n.clone(), json!(s(p)))).collect()));
    }
    if !raw.users.is_empty() {
        let users: Vec<Value> = raw
            .users
            .iter()
            .map(|u| {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), json!(u.name.as_str()));
                if !u.roles.is_empty() {
                    m.insert("roles".into(), json!(s(&u.roles)));
                }
                if !u.permissions.is_empty() {
                    m.insert("permissions".into(), json!(s(&u.permissions)));
                }
                Value::Object(m)
            })
            .collect();
        doc.insert("users".into(), Value::Array(users));
    }
    for kind in [Kind::Client, Kind::ApiKey] {
        let list: Vec<Value> = raw.entries().filter(|e| e.kind == kind).map(|e| entry_value(&entry_row(&e))).collect();
        if !list.is_empty() {
            doc.insert(kind.section().into(), Value::Array(list));
        }
    }
    Value::Object(doc)
}

/// One credential as the file holds it (its document value).
pub fn entry_value(r: &CredRow) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(r.kind.name_key().into(), json!(r.name));
    m.insert(r.kind.hash_key().into(), json!(r.hash));
    if !r.previous.is_empty() {
        m.insert(r.kind.previous_key().into(), previous_json(&r.previous));
    }
    if let Some(u) = &r.user {
        m.insert("user".into(), json!(u));
    }
    if !r.roles.is_empty() {
        m.insert("roles".into(), json!(r.roles));
    }
    if !r.permissions.is_empty() {
        m.insert("permissions".into(), json!(r.permissions));
    }
    if let Some(ips) = &r.allowed_ips {
        m.insert("allowed_ips".into(), json!(ips));
    }
    m.insert("expires".into(), json!(r.expires));
    if r.disabled {
        m.insert("disabled".into(), json!(true));
    }
    for (k, v) in [("description", &r.description), ("notes", &r.notes), ("created_at", &r.created_at), ("created_by", &r.created_by)] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    Value::Object(m)
}
