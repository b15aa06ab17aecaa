//! What changed between two snapshots, by name (never a secret or a hash), for the reload log.
use std::collections::{HashMap, HashSet};
use std::fmt;


use crate::config::{Credential, CredentialStore, ManagementSettings, Route, Settings, Snapshot};


#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChange {
    pub name: String,
    /// Field names, e.g. `permissions`, `expires`, `disabled`, `key_hash`, `secret_hash`.
    pub fields: Vec<&'static str>,
}

/// What a reload changed, by name only: never a secret, a hash or an address list.
/// Lists keep file order (the new file's for additions and changes, the old one's for
/// removals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Main-config settings that changed (e.g. `upstream`, `trusted_proxies`, `tokens`).
    pub settings: Vec<&'static str>,
    /// Routes by their `match` text.
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    /// Same `match`, different `require`, `public` or parameter names.
    pub routes_changed: Vec<String>,
    /// Clients and API keys by id/name.
    pub credentials_added: Vec<String>,
    pub credentials_removed: Vec<String>,
    pub credentials_changed: Vec<CredentialChange>,
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    /// Custom roles (defined in the credentials file) by name.
    pub roles_added: Vec<String>,
    pub roles_removed: Vec<String>,
}

impl ConfigDiff {
    /// Nothing that has a name changed (comments, formatting or order only).
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

impl fmt::Display for ConfigDiff {
    /// `credentials added: k2; credentials changed: k1 (permissions, expires); …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no named change (comments, formatting or order only)");
        }
        let changed: Vec<String> = self
            .credentials_changed
            .iter()
            .map(|c| format!("{} ({})", c.name, c.fields.join(", ")))
            .collect();
        let settings: Vec<String> = self.settings.iter().map(|s| s.to_string()).collect();
        let parts: [(&str, &[String]); 11] = [
            ("settings changed", &settings),
            ("routes added", &self.routes_added),
            ("routes removed", &self.routes_removed),
            ("routes changed", &self.routes_changed),
            ("credentials added", &self.credentials_added),
            ("credentials removed", &self.credentials_removed),
            ("credentials changed", &changed),
            ("users added", &self.users_added),
            ("users removed", &self.users_removed),
            ("roles added", &self.roles_added),
            ("roles removed", &self.roles_removed),
        ];
        let mut first = true;
        for (label, names) in parts {
            if names.is_empty() {
                continue;
            }
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{label}: {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// What changed from `old` to `new`, by name. Pure: reads both snapshots, nothing else.
pub fn diff(old: &Snapshot, new: &Snapshot) -> ConfigDiff {
    let (credentials_added, credentials_removed, credentials_changed) =
        diff_credentials(&old.credentials, &new.credentials);
    let (routes_added, routes_removed, routes_changed) = diff_routes(&old.routes.routes, &new.routes.routes);
    let (users_added, users_removed) = added_removed(&old.credentials.users, &new.credentials.users);
    let (roles_added, roles_removed) =
        added_removed(&old.credentials.custom_roles, &new.credentials.custom_roles);
    let mut settings = diff_settings(&old.settings, &new.settings);
    if old.tokens != new.tokens {
        settings.push("tokens");
    }
    ConfigDiff {
        settings,
        routes_added,
        routes_removed,
        routes_changed,
        credentials_added,
        credentials_removed,
        credentials_changed,
        users_added,
        users_removed,
        roles_added,
        roles_removed,
    }
}

/// Names in `new` not in `old`, and in `old` not in `new`, each in its list's order.
fn added_removed(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let old_set: HashSet<&str> = old.iter().map(String::as_str).collect();
    let new_set: HashSet<&str> = new.iter().map(String::as_str).collect();
    (
        new.iter()
            .filter(|n| !old_set.contains(n.as_str()))
            .cloned()
            .collect(),
        old.iter()
            .filter(|n| !new_set.contains(n.as_str()))
            .cloned()
            .collect(),
    )
}

fn diff_settings(old: &Settings, new: &Settings) -> Vec<&'static str> {
    // Destructured whole, so that a new setting cannot be left out of the diff.
    let Settings {
        listen,
        admin_listen,
        upstream,
        upstream_text,
        environment,
        trusted_proxies,
        shutdown_grace,
        upstream_timeout,
        upstream_connect_timeout,
        mode,
        tls,
        upstream_tls,
        credentials_file,
        management,
        store,
        threads,
        work_stealing,
        per_credential_metrics,
    } = old;
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(*listen != new.listen, "listen");
    check(*admin_listen != new.admin_listen, "admin_listen");
    check(
        *upstream != new.upstream || *upstream_text != new.upstream_text,
        "upstream",
    );
    check(*environment != new.environment, "environment");
    check(*trusted_proxies != new.trusted_proxies, "trusted_proxies");
    check(*shutdown_grace != new.shutdown_grace, "shutdown_grace");
    check(*upstream_timeout != new.upstream_timeout, "upstream_timeout");
    check(
        *upstream_connect_timeout != new.upstream_connect_timeout,
        "upstream_connect_timeout",
    );
    check(*mode != new.mode, "mode");
    check(*tls != new.tls, "tls");
    check(*upstream_tls != new.upstream_tls, "upstream_tls");
    check(*credentials_file != new.credentials_file, "credentials_file");
    check(*store != new.store, "store");
    check(*threads != new.threads, "threads");
    check(*work_stealing != new.work_stealing, "work_stealing");
    check(*per_credential_metrics != new.per_credential_metrics, "metrics.per_credential");
    check(management_differs(management.as_ref(), new.management.as_ref()), "management");
    changed
}

fn management_differs(old: Option<&ManagementSettings>, new: Option<&ManagementSettings>) -> bool {
    match (old, new) {
        (None, None) => false,
        (Some(o), Some(n)) => {
            let ManagementSettings { listen, tls, default_expiry, approval_required, approval_expires_after } = o;
            *listen != n.listen
                || *tls != n.tls
                || *default_expiry != n.default_expiry
                || *approval_required != n.approval_required
                || *approval_expires_after != n.approval_expires_after
        }
        _ => true,
    }
}

type Lists<T> = (Vec<String>, Vec<String>, Vec<T>);

fn diff_routes(old: &[Route], new: &[Route]) -> Lists<String> {
    let old_by_id: HashMap<&str, &Route> = old.iter().map(|r| (r.id.as_ref(), r)).collect();
    let new_ids: HashSet<&str> = new.iter().map(|r| r.id.as_ref()).collect();
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for r in new {
        match old_by_id.get(r.id.as_ref()) {
            None => added.push(r.id.to_string()),
            Some(o) if route_differs(o, r) => changed.push(r.id.to_string()),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|r| !new_ids.contains(r.id.as_ref()))
        .map(|r| r.id.to_string())
        .collect();
    (added, removed, changed)
}

fn route_differs(old: &Route, new: &Route) -> bool {
    let Route {
        id: _,
        method,
        template,
        public,
        require,
        vault_param,
        key_param,
        mode,
        websocket,
    } = old;
    *method != new.method
        || *template != new.template
        || *public != new.public
        || *require != new.require
        || *vault_param != new.vault_param
        || *key_param != new.key_param
        || *mode != new.mode
        || *websocket != new.websocket
}

fn diff_credentials(old: &CredentialStore, new: &CredentialStore) -> Lists<CredentialChange> {
    let old_by_id: HashMap<&str, &Credential> = old.all.iter().map(|c| (c.id.as_ref(), c.as_ref())).collect();
    let new_ids: HashSet<&str> = new.all.iter().map(|c| c.id.as_ref()).collect();
    let old_keys = key_hash_by_name(old);
    let new_keys = key_hash_by_name(new);
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for c in &new.all {
        let id = c.id.as_ref();
        match old_by_id.get(id) {
            None => added.push(id.to_string()),
            Some(o) => {
                let mut fields = credential_fields_changed(o, c);
                if old_keys.get(id) != new_keys.get(id) {
                    fields.push("key_hash");
                }
                if !fields.is_empty() {
                    changed.push(CredentialChange {
                        name: id.to_string(),
                        fields,
                    });
                }
            }
        }
    }
    let removed = old
        .all
        .iter()
        .filter(|c| !new_ids.contains(c.id.as_ref()))
        .map(|c| c.id.to_string())
        .collect();
    (added, removed, changed)
}

/// An API key's hash lives in the lookup map, not in its `Credential`.
fn key_hash_by_name(store: &CredentialStore) -> HashMap<&str, &[u8; 32]> {
    store
        .by_key_hash
        .iter()
        .map(|(h, c)| (c.id.as_ref(), h))
        .collect()
}

/// Which fields of one credential differ, by name. Effective permissions are compared
/// as sets, so a reordering is not a change, while a role's new definition or a linked
/// user's new roles show as `permissions`.
fn credential_fields_changed(old: &Credential, new: &Credential) -> Vec<&'static str> {
    // Destructured whole, so that a new field cannot be left out of the diff.
    let Credential {
        id: _,
        kind,
        user,
        user_missing,
        roles,
        grants,
        allowed_ips,
        expires_at,
        expires_text,
        disabled,
        description,
        notes,
        secret,
    } = old;
    let mut fields = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            fields.push(name);
        }
    };
    check(*kind != new.kind, "kind");
    check(*user != new.user || *user_missing != new.user_missing, "user");
    check(*roles != new.roles, "roles");
    let old_grants: HashSet<_> = grants.iter().collect();
    let new_grants: HashSet<_> = new.grants.iter().collect();
    check(old_grants != new_grants, "permissions");
    check(*allowed_ips != new.allowed_ips, "allowed_ips");
    check(
        *expires_at != new.expires_at || *expires_text != new.expires_text,
        "expires",
    );
    check(*disabled != new.disabled, "disabled");
    check(*description != new.description, "description");
    check(*notes != new.notes, "notes");
    check(*secret != new.secret, "secret_hash");
    fields
}

// ---------------------------------------------------------------------------------
// The reloader: the fingerprint gate, the observer, and which directories to watch.
