//! Maker-checker (SPEC §9 "Approval"): a create, or an edit that widens access, waits as
//! a pending request until another actor with `api_access:approve` approves or denies it,
//! or it expires. The queue lives in a file of its own beside the credentials file and
//! holds no secret: the secret of an approved create is made at approval and kept in this
//! process's memory only, for one pickup by the requester within an hour.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long an approved create's secret waits for its requester.
pub const PICKUP_SECS: i64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Approved,
    Denied,
    Expired,
}

/// One request, as the queue file and the API have it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Request {
    pub id: String,
    /// `create` or `edit`.
    pub action: String,
    /// `client` or `api_key`.
    pub kind: String,
    /// The credential's name.
    pub target: String,
    pub requested_by: String,
    /// The credential the requester signed in with.
    pub requested_with: String,
    /// RFC 3339.
    pub requested_at: String,
    pub expires_at: String,
    #[serde(default)]
    pub justification: Option<String>,
    /// The create or edit body, as sent (never a secret: none exists yet).
    pub change: Value,
    pub status: Status,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at: Option<String>,
    /// An approved create whose secret the requester has not picked up yet (true only in
    /// the requester's own view).
    #[serde(default, skip_deserializing)]
    pub secret_ready: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct QueueFile {
    version: u32,
    requests: Vec<Request>,
}

/// The queue and the secrets waiting for pickup.
pub struct Queue {
    path: Option<PathBuf>,
    /// The PostgreSQL store keeps the queue in its database (SPEC §10).
    db: Option<std::sync::Arc<crate::store::postgres::PgStore>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    requests: Vec<Request>,
    /// Request id → (secret, pickup deadline). Memory only.
    secrets: HashMap<String, (String, i64)>,
}

/// The queue file of the credentials file at `credentials`.
pub fn queue_path(credentials: &Path) -> PathBuf {
    let name = credentials.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    crate::config::parent_dir(credentials).join(format!("{name}.requests.json"))
}

fn rfc3339(t: i64) -> String {
    crate::store::span::rfc3339(t)
}

fn parse_time(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).map_or(0, |t| t.timestamp())
}

impl Queue {
    /// The queue kept at `path` (`None`: memory only, for tests); a missing file is empty.
    pub fn open(path: Option<PathBuf>) -> Queue {
        let requests = path
            .as_ref()
            .and_then(|p| match std::fs::read(p) {
                Ok(b) => match serde_json::from_slice::<QueueFile>(&b) {
                    Ok(q) => Some(q.requests),
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "the approval queue file is not valid; starting with an empty queue");
                        None
                    }
                },
                Err(_) => None,
            })
            .unwrap_or_default();
        Queue { path, db: None, inner: Mutex::new(Inner { requests, secrets: HashMap::new() }) }
    }

    /// The queue kept in the PostgreSQL store's database.
    pub fn in_database(db: std::sync::Arc<crate::store::postgres::PgStore>) -> Queue {
        Queue { path: None, db: Some(db), inner: Mutex::new(Inner::default()) }
    }

    /// The queue, re-read from the database first when it lives there (another replica
    /// may have changed it).
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = &self.db {
            match db.load_requests() {
                Ok(rows) => inner.requests = rows.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect(),
                Err(e) => tracing::warn!(error = %e, "cannot read the approval queue from the database; using the last one read"),
            }
        }
        inner
    }

    fn save(&self, inner: &Inner) -> Result<(), String> {
        if let Some(db) = &self.db {
            let rows = inner.requests.iter().map(|r| (r.id.clone(), serde_json::to_value(r).unwrap_or_default())).collect();
            return db.save_requests(rows);
        }
        let Some(path) = &self.path else { return Ok(()) };
        let body = serde_json::to_string_pretty(&QueueFile { version: 1, requests: inner.requests.clone() })
            .map_err(|e| e.to_string())?;
        crate::store::file::replace_file(path, &body).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Marks pending requests past their expiry as expired; forgets secrets not picked up.
    fn expire(&self, inner: &mut Inner, now: i64) -> bool {
        let mut changed = false;
        for r in &mut inner.requests {
            if r.status == Status::Pending && parse_time(&r.expires_at) <= now {
                r.status = Status::Expired;
                changed = true;
            }
        }
        inner.secrets.retain(|_, (_, until)| *until > now);
        // Answered requests are kept a week for the record, then dropped.
        let before = inner.requests.len();
        inner.requests.retain(|r| r.status == Status::Pending || parse_time(r.decided_at.as_deref().unwrap_or(&r.expires_at)) + 7 * 86_400 > now);
        changed || before != inner.requests.len()
    }

    /// Adds a pending request; returns it.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &self,
        action: &str,
        kind: &str,
        target: &str,
        requested_by: &str,
        requested_with: &str,
        justification: Option<String>,
        change: Value,
        expires_after: i64,
        now: i64,
    ) -> Result<Request, String> {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if inner.requests.iter().any(|r| r.status == Status::Pending && r.target == target && r.action == "create" && action == "create") {
            return Err(format!("a request to create {target:?} is already pending"));
        }
        let mut id = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let r = Request {
            id: hex::encode(id),
            action: action.into(),
            kind: kind.into(),
            target: target.into(),
            requested_by: requested_by.into(),
            requested_with: requested_with.into(),
            requested_at: rfc3339(now),
            expires_at: rfc3339(now + expires_after),
            justification,
            change,
            status: Status::Pending,
            decided_by: None,
            decided_at: None,
            secret_ready: false,
        };
        inner.requests.push(r.clone());
        self.save(&inner)?;
        Ok(r)
    }

    /// Every request, newest first, as `viewer` sees it (`secret_ready` only for the requester).
    pub fn list(&self, viewer: &str, now: i64) -> Vec<Request> {
        let mut inner = self.lock();
        if self.expire(&mut inner, now) {
            let _ = self.save(&inner);
        }
        let mut out: Vec<Request> = inner.requests.iter().rev().cloned().collect();
        for r in &mut out {
            r.secret_ready = r.requested_by == viewer && inner.secrets.contains_key(&r.id);
        }
        out
    }

    /// The pending request `id`, to be decided (a copy; [`Queue::decide`] records the answer).
    pub fn pending(&self, id: &str, now: i64) -> Result<Request, Refusal> {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let r = inner.requests.iter().find(|r| r.id == id).ok_or(Refusal::NotFound)?;
        if r.status != Status::Pending {
            return Err(Refusal::NotPending(r.status));
        }
        Ok(r.clone())
    }

    /// Records the answer to pending request `id`; an approved create's `secret` waits for pickup.
    pub fn decide(&self, id: &str, approved: bool, by: &str, secret: Option<String>, now: i64) -> Result<Request, String> {
        let mut inner = self.lock();
        let r = inner.requests.iter_mut().find(|r| r.id == id).ok_or("no such request")?;
        r.status = if approved { Status::Approved } else { Status::Denied };
        r.decided_by = Some(by.to_string());
        r.decided_at = Some(rfc3339(now));
        let out = r.clone();
        if let Some(s) = secret {
            inner.secrets.insert(id.to_string(), (s, now + PICKUP_SECS));
        }
        self.save(&inner)?;
        Ok(out)
    }

    /// The secret of approved request `id`, once, for its requester.
    pub fn pickup(&self, id: &str, requester: &str, now: i64) -> Result<(String, String), Refusal> {
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        let r = inner.requests.iter().find(|r| r.id == id).ok_or(Refusal::NotFound)?;
        if r.requested_by != requester {
            return Err(Refusal::NotYours);
        }
        let target = r.target.clone();
        match inner.secrets.remove(id) {
            Some((secret, _)) => Ok((target, secret)),
            None => Err(Refusal::Gone),
        }
    }
}

/// Why a request cannot be answered or picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    NotPending(Status),
    NotYours,
    /// Picked up already, never made, or past its hour.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(q: &Queue, now: i64) -> Request {
        q.submit("create", "client", "acme", "alice", "alice-key", Some("needed".into()), serde_json::json!({"name": "acme"}), 600, now).unwrap()
    }

    #[test]
    fn allows_one_pickup_of_an_approved_secret_by_its_requester() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.yaml.requests.json");
        let q = Queue::open(Some(path.clone()));
        let r = submit(&q, 0);
        assert_eq!(q.pending(&r.id, 1).unwrap().status, Status::Pending);
        q.decide(&r.id, true, "carol", Some("pcs_test_secret".into()), 2).unwrap();
        assert!(q.list("alice", 3)[0].secret_ready);
        assert!(!q.list("carol", 3)[0].secret_ready, "only the requester sees it");
        assert_eq!(q.pickup(&r.id, "carol", 4), Err(Refusal::NotYours));
        assert_eq!(q.pickup(&r.id, "alice", 4).unwrap().1, "pcs_test_secret");
        assert_eq!(q.pickup(&r.id, "alice", 5), Err(Refusal::Gone), "once");
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(!file.contains("pcs_test_secret"), "no secret at rest: {file}");
        assert_eq!(Queue::open(Some(path)).list("alice", 6)[0].status, Status::Approved, "kept across restarts");
    }

    #[test]
    fn denies_answers_to_expired_or_decided_requests_and_late_pickups() {
        let q = Queue::open(None);
        let r = submit(&q, 0);
        assert_eq!(q.pending(&r.id, 600).unwrap_err(), Refusal::NotPending(Status::Expired));
        let r = q.submit("create", "client", "b", "alice", "k", None, Value::Null, 600, 700).unwrap();
        q.decide(&r.id, false, "carol", None, 701).unwrap();
        assert_eq!(q.pending(&r.id, 702).unwrap_err(), Refusal::NotPending(Status::Denied));
        let r = q.submit("create", "client", "c", "alice", "k", None, Value::Null, 600, 800).unwrap();
        q.decide(&r.id, true, "carol", Some("s".into()), 801).unwrap();
        assert_eq!(q.pickup(&r.id, "alice", 801 + PICKUP_SECS), Err(Refusal::Gone), "an hour at most");
        assert_eq!(q.pending("nope", 0).unwrap_err(), Refusal::NotFound);
    }
}
