//! The PostgreSQL backend of the credential store (SPEC §10): the credentials file's
//! content as rows (roles, users, credentials), pending requests and last-use times, with
//! versioned migrations kept in the repository (`migrations/`, refinery) applied under an
//! advisory lock so that several replicas may run them at once.
//!
//! Writes are transactions: they lock the store's generation row, refuse a stale expected
//! version, validate the changed credential with the loader's own code (against every role
//! and user, so a change costs one row, not the whole set), and bump the row's version.
//! Triggers bump the generation and `NOTIFY portcullis` with `<table>:<name>`, so every
//! replica hears every change, whoever made it (the API, the CLI, an import).
//!
//! The store is used from synchronous code (the CLI, the management API's handlers): each
//! call runs on this store's own small runtime, from a scoped thread, so it can be called
//! from inside another runtime too.
use std::future::Future;
use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::{Client, Row};

use super::change::{Change, NewEntry};
use super::row::{entry_row, file_value, placed, previous_json, push_owned, push_row, CredRow};
use super::file::{Applied, Version};
use super::{Kind, Store, StoreError};
use crate::config::raw::{At, CredentialsRaw, UserRaw};
use crate::config::validate::parse_expires;
use crate::config::{self, ConfigErrors, Environment};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How to reach the database, from the main config (the URL itself is never in it).
pub fn database_url(url_env: Option<&str>, url_file: Option<&std::path::Path>) -> Result<String, String> {
    match (url_env, url_file) {
        (Some(var), None) => std::env::var(var).map(|u| u.trim().to_string()).map_err(|_| format!("store.url_env: the environment variable {var} is not set")),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map(|u| u.trim().to_string())
            .map_err(|e| format!("store.url_file: cannot read {}: {e}", f.display())),
        _ => Err("store: give exactly one of url_env and url_file".into()),
    }
}

/// TLS to the database through rustls (the sidecar's one TLS stack), with the web PKI
/// roots; `sslmode` in the URL decides whether it is required.
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3 is supported")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// The connection settings of `url` (an invalid URL is named without echoing it: it may
/// hold a password).
pub fn config_of(url: &str) -> Result<tokio_postgres::Config, String> {
    url.parse().map_err(|_| "the database URL is not valid".to_string())
}

/// Connects once; the connection is driven by a task on the current runtime.
pub async fn connect(url: &str) -> Result<(Client, tokio::task::JoinHandle<()>), String> {
    let (client, conn) = config_of(url)?.connect(tls()).await.map_err(|e| format!("cannot connect to the database: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

/// TLS for a connection made elsewhere (the replicas' LISTEN connection).
pub fn make_tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    tls()
}

/// The store on one database.
pub struct PgStore {
    /// Always `Some` until drop (which may happen on another runtime's thread, where only
    /// a background shutdown is allowed).
    rt: Option<tokio::runtime::Runtime>,
    url: String,
    pub env: Environment,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("database: {}", d.message()),
        None => format!("database: {e}"),
    }
}

impl PgStore {
    /// A store on the database at `url` (checked by connecting once).
    pub fn open(url: &str, env: Environment) -> Result<PgStore, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("portcullis-pg")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the database runtime: {e}"))?;
        let store = PgStore { rt: Some(rt), url: url.to_string(), env };
        store.run(|c| async move { c.simple_query("SELECT 1").await.map(|_| ()).map_err(pg_err) })?;
        Ok(store)
    }

    /// Runs `f` with a fresh connection on this store's runtime, from any thread.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        T: Send,
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, String>> + Send,
    {
        let url = self.url.clone();
        let Some(rt) = self.rt.as_ref() else {
            return Err("the database runtime is gone".into());
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                rt.block_on(async move {
                    let (client, task) = connect(&url).await?;
                    let out = f(client).await;
                    task.abort();
                    out
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the database call panicked".to_string()))
        })
    }

    /// Applies the migrations not applied yet, under an advisory lock (several replicas
    /// may run this at once: one applies, the others then find nothing to do). Returns
    /// the names of those applied now.
    pub fn migrate(&self) -> Result<Vec<String>, String> {
        self.run(|mut c| async move {
            c.execute("SELECT pg_advisory_lock(7130217001)", &[]).await.map_err(pg_err)?;
            let report = embedded::migrations::runner().set_grouped(true).run_async(&mut c).await;
            let _ = c.execute("SELECT pg_advisory_unlock(7130217001)", &[]).await;
            let report = report.map_err(|e| format!("migration failed (nothing of it was applied): {e}"))?;
            Ok(report.applied_migrations().iter().map(|m| m.to_string()).collect())
        })
    }

    /// Every role, user and credential, and the generation they were read at.
    pub fn load_raw(&self) -> Result<(CredentialsRaw, i64), String> {
        self.run(|c| async move { read_all(&c).await })
    }

    /// The store's generation (bumped by every change).
    pub fn generation(&self) -> Result<i64, String> {
        self.run(|c| async move { generation(&c).await })
    }

    /// Replaces everything with `raw` in one transaction, after validating it as the
    /// loader would (a GitOps import of a credentials file); one NOTIFY tells the replicas.
    pub fn import(&self, raw: &CredentialsRaw, now: i64) -> Result<usize, String> {
        let errs = validate_all(raw, self.env, now);
        if let Err(e) = errs {
            return Err(format!("not imported: the sidecar would refuse these credentials:\n{e}"));
        }
        let rows = rows_of(raw);
        let n = rows.credentials.len();
        self.run(move |mut c| async move {
            let t = c.transaction().await.map_err(pg_err)?;
            t.batch_execute("SET LOCAL portcullis.bulk = 'on'; DELETE FROM portcullis_credentials; DELETE FROM portcullis_users; DELETE FROM portcullis_roles;")
                .await
                .map_err(pg_err)?;
            for (name, perms) in &rows.roles {
                t.execute("INSERT INTO portcullis_roles (name, permissions) VALUES ($1, $2)", &[name, perms]).await.map_err(pg_err)?;
            }
            for (name, roles, perms) in &rows.users {
                t.execute("INSERT INTO portcullis_users (name, roles, permissions) VALUES ($1, $2, $3)", &[name, roles, perms]).await.map_err(pg_err)?;
            }
            // In chunks of rows as arrays (UNNEST): a few statements, not one per row.
            for chunk in rows.credentials.chunks(5000) {
                bulk_insert(&t, chunk).await?;
            }
            t.batch_execute("UPDATE portcullis_meta SET generation = generation + 1; SELECT pg_notify('portcullis', 'all:');")
                .await
                .map_err(pg_err)?;
            t.commit().await.map_err(pg_err)?;
            Ok(n)
        })
    }

    /// Everything as a credentials file (YAML), for `store export`.
    pub fn export(&self) -> Result<String, String> {
        let (raw, _) = self.load_raw()?;
        serde_saphyr::to_string(&file_value(&raw)).map_err(|e| format!("cannot render: {e}"))
    }

    pub fn label(&self) -> String {
        "the PostgreSQL store".to_string()
    }

    /// Writes last-use times in one statement, never moving one backwards.
    pub fn save_last_used(&self, times: Vec<(String, i64)>) -> Result<(), String> {
        self.run(move |c| async move {
            let names: Vec<String> = times.iter().map(|(n, _)| n.clone()).collect();
            let at: Vec<f64> = times.iter().map(|(_, t)| *t as f64).collect();
            c.execute(
                "INSERT INTO portcullis_last_used (name, at) SELECT n, to_timestamp(t) FROM UNNEST($1::text[], $2::float8[]) AS x(n, t)
                 ON CONFLICT (name) DO UPDATE SET at = GREATEST(portcullis_last_used.at, EXCLUDED.at)",
                &[&names, &at],
            )
            .await
            .map(|_| ())
            .map_err(pg_err)
        })
    }

    /// Every last-use time in the database (name, unix seconds).
    pub fn load_last_used(&self) -> Result<Vec<(String, i64)>, String> {
        self.run(|c| async move {
            let rows = c.query("SELECT name, extract(epoch FROM at)::float8 FROM portcullis_last_used", &[]).await.map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1) as i64)).collect())
        })
    }

    /// The pending approval requests (and those answered lately), as the queue keeps them.
    pub fn load_requests(&self) -> Result<Vec<Value>, String> {
        self.run(|c| async move {
            let rows = c.query("SELECT body FROM portcullis_requests ORDER BY created", &[]).await.map_err(pg_err)?;
            Ok(rows.iter().map(|r| r.get::<_, Value>(0)).collect())
        })
    }

    /// Replaces the queue with `requests` in one transaction (no secret is ever in them).
    pub fn save_requests(&self, requests: Vec<(String, Value)>) -> Result<(), String> {
        self.run(move |mut c| async move {
            let t = c.transaction().await.map_err(pg_err)?;
            t.execute("DELETE FROM portcullis_requests", &[]).await.map_err(pg_err)?;
            for (i, (id, body)) in requests.iter().enumerate() {
                t.execute(
                    "INSERT INTO portcullis_requests (id, body, created) VALUES ($1, $2, now() + make_interval(secs => $3))",
                    &[id, body, &(i as f64 / 1000.0)],
                )
                .await
                .map_err(pg_err)?;
            }
            t.commit().await.map_err(pg_err)
        })
    }
}

// ---------------------------------------------------------------------------------
// Rows.

struct Rows {
    roles: Vec<(String, Vec<String>)>,
    users: Vec<(String, Vec<String>, Vec<String>)>,
    credentials: Vec<CredRow>,
}

const COLUMNS: &str = "name, kind, hash, previous, user_name, roles, permissions, allowed_ips, expires, disabled, description, notes, created_at, created_by";
const INSERT: &str = "INSERT INTO portcullis_credentials (name, kind, hash, previous, user_name, roles, permissions, allowed_ips, expires, disabled, description, notes, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

async fn insert_row(t: &tokio_postgres::Transaction<'_>, stmt: &tokio_postgres::Statement, r: &CredRow) -> Result<(), String> {
    t.execute(
        stmt,
        &[
            &r.name,
            &r.kind.json(),
            &r.hash,
            &previous_json(&r.previous),
            &r.user,
            &r.roles,
            &r.permissions,
            &r.allowed_ips,
            &r.expires,
            &r.disabled,
            &r.description,
            &r.notes,
            &r.created_at,
            &r.created_by,
        ],
    )
    .await
    .map(|_| ())
    .map_err(pg_err)
}

/// Inserts `rows` with one statement.
async fn bulk_insert(t: &tokio_postgres::Transaction<'_>, rows: &[CredRow]) -> Result<(), String> {
    let col = |f: &dyn Fn(&CredRow) -> Option<String>| -> Vec<Option<String>> { rows.iter().map(f).collect() };
    let names = col(&|r| Some(r.name.clone()));
    let kinds = col(&|r| Some(r.kind.json().to_string()));
    let hashes = col(&|r| Some(r.hash.clone()));
    let previous: Vec<Value> = rows.iter().map(|r| previous_json(&r.previous)).collect();
    let users = col(&|r| r.user.clone());
    // Arrays of arrays must be rectangular in PostgreSQL: lists travel as JSON text.
    let list = |l: &[String]| serde_json::to_string(l).unwrap_or_else(|_| "[]".into());
    let roles = col(&|r| Some(list(&r.roles)));
    let perms = col(&|r| Some(list(&r.permissions)));
    let ips = col(&|r| r.allowed_ips.as_ref().map(|l| list(l)));
    let expires = col(&|r| Some(r.expires.clone()));
    let disabled: Vec<bool> = rows.iter().map(|r| r.disabled).collect();
    let description = col(&|r| r.description.clone());
    let notes = col(&|r| r.notes.clone());
    let created_at = col(&|r| r.created_at.clone());
    let created_by = col(&|r| r.created_by.clone());
    t.execute(
        "INSERT INTO portcullis_credentials (name, kind, hash, previous, user_name, roles, permissions, allowed_ips, expires, disabled, description, notes, created_at, created_by)
         SELECT n, k, h, p, u,
                ARRAY(SELECT jsonb_array_elements_text(r::jsonb)),
                ARRAY(SELECT jsonb_array_elements_text(pe::jsonb)),
                CASE WHEN i IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(i::jsonb)) END,
                e, d, de, no, ca, cb
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::text[], $13::text[], $14::text[])
              WITH ORDINALITY AS x(n, k, h, p, u, r, pe, i, e, d, de, no, ca, cb, ord)
         ORDER BY ord",
        &[&names, &kinds, &hashes, &previous, &users, &roles, &perms, &ips, &expires, &disabled, &description, &notes, &created_at, &created_by],
    )
    .await
    .map(|_| ())
    .map_err(pg_err)
}

fn row_of(r: &Row) -> CredRow {
    let previous: Value = r.get("previous");
    CredRow {
        name: r.get("name"),
        kind: if r.get::<_, &str>("kind") == "client" { Kind::Client } else { Kind::ApiKey },
        hash: r.get("hash"),
        previous: previous
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some((p.get("hash")?.as_str()?.to_string(), p.get("until")?.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default(),
        user: r.get("user_name"),
        roles: r.get("roles"),
        permissions: r.get("permissions"),
        allowed_ips: r.get("allowed_ips"),
        expires: r.get("expires"),
        disabled: r.get("disabled"),
        description: r.get("description"),
        notes: r.get("notes"),
        created_at: r.get("created_at"),
        created_by: r.get("created_by"),
    }
}

fn rows_of(raw: &CredentialsRaw) -> Rows {
    Rows {
        roles: raw.roles.iter().map(|(n, p)| (n.clone(), crate::config::raw::strings(p))).collect(),
        users: raw
            .users
            .iter()
            .map(|u| (u.name.to_string(), crate::config::raw::strings(&u.roles), crate::config::raw::strings(&u.permissions)))
            .collect(),
        credentials: raw.entries().map(|e| entry_row(&e)).collect(),
    }
}

async fn generation(c: &Client) -> Result<i64, String> {
    let row = c.query_one("SELECT generation FROM portcullis_meta", &[]).await.map_err(|e| {
        if e.as_db_error().is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            "the database has no portcullis tables: run `portcullis store migrate --config …` first".to_string()
        } else {
            pg_err(e)
        }
    })?;
    Ok(row.get(0))
}

/// Reads everything in one repeatable-read transaction: a consistent view.
pub async fn read_all(c: &Client) -> Result<(CredentialsRaw, i64), String> {
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(pg_err)?;
    let out = async {
        let gen = generation(c).await?;
        let mut raw = CredentialsRaw::default();
        for r in c.query("SELECT name, permissions FROM portcullis_roles ORDER BY name", &[]).await.map_err(pg_err)? {
            raw.roles.insert(r.get(0), At::new(placed(&r.get::<_, Vec<String>>(1))));
        }
        for r in c.query("SELECT name, roles, permissions FROM portcullis_users ORDER BY position", &[]).await.map_err(pg_err)? {
            raw.users.push(UserRaw {
                name: At::new(r.get(0)),
                roles: placed(&r.get::<_, Vec<String>>(1)),
                permissions: placed(&r.get::<_, Vec<String>>(2)),
            });
        }
        let sql = format!("SELECT {COLUMNS} FROM portcullis_credentials ORDER BY position");
        for r in c.query(sql.as_str(), &[]).await.map_err(pg_err)? {
            push_owned(&mut raw, row_of(&r));
        }
        Ok::<_, String>((raw, gen))
    }
    .await;
    let _ = c.batch_execute("COMMIT").await;
    out
}

/// One credential's row, or `None` when there is none of that name.
pub async fn read_one(c: &Client, name: &str) -> Result<Option<CredRow>, String> {
    let sql = format!("SELECT {COLUMNS} FROM portcullis_credentials WHERE name = $1");
    Ok(c.query_opt(sql.as_str(), &[&name]).await.map_err(pg_err)?.as_ref().map(row_of))
}

/// Validates a whole set as the loader does.
fn validate_all(raw: &CredentialsRaw, env: Environment, now: i64) -> Result<(), ConfigErrors> {
    config::credentials_from_raw(std::path::Path::new("the PostgreSQL store"), raw, env, now).map(|_| ())
}

/// Validates one credential (with every role and user, which it may name) as the loader
/// does: a write costs one row's validation, whatever the size of the store.
fn validate_one(roles_users: &CredentialsRaw, row: &CredRow, env: Environment, now: i64) -> Result<(crate::config::CredentialStore, Vec<String>), ConfigErrors> {
    let mut raw = CredentialsRaw { roles: Default::default(), users: Vec::new(), clients: Vec::new(), api_keys: Vec::new() };
    for (n, p) in &roles_users.roles {
        raw.roles.insert(n.clone(), At::new(placed(&crate::config::raw::strings(p))));
    }
    for u in &roles_users.users {
        raw.users.push(UserRaw { name: At::new(u.name.to_string()), roles: placed(&crate::config::raw::strings(&u.roles)), permissions: placed(&crate::config::raw::strings(&u.permissions)) });
    }
    push_row(&mut raw, row);
    config::credentials_from_raw(std::path::Path::new("the PostgreSQL store"), &raw, env, now)
}

fn gen_version(g: i64) -> Version {
    Version::from_generation(g)
}

/// The row after `change` (`None`: deleted).
fn changed_row(old: Option<CredRow>, change: &Change, now: i64) -> Result<Option<CredRow>, StoreError> {
    let missing = || StoreError::NotFound(format!("no client or API key named {:?}", change.name()));
    match change {
        Change::Create { kind, entry } => {
            if old.is_some() {
                return Err(StoreError::Stale(format!("a credential named {:?} exists already", entry.name)));
            }
            Ok(Some(new_row(*kind, entry)))
        }
        Change::Edit { edit, .. } => {
            let mut r = old.ok_or_else(missing)?;
            if let Some(v) = &edit.roles {
                r.roles = v.clone();
            }
            if let Some(v) = &edit.permissions {
                r.permissions = v.clone();
            }
            if let Some(v) = &edit.allowed_ips {
                r.allowed_ips = v.clone();
            }
            if let Some(v) = &edit.description {
                r.description = v.clone();
            }
            if let Some(v) = &edit.notes {
                r.notes = v.clone();
            }
            Ok(Some(r))
        }
        Change::SetDisabled { disabled, .. } => {
            let mut r = old.ok_or_else(missing)?;
            r.disabled = *disabled;
            Ok(Some(r))
        }
        Change::Delete { .. } => {
            old.ok_or_else(missing)?;
            Ok(None)
        }
        Change::Rotate { hash, overlap_until, .. } => {
            let mut r = old.ok_or_else(missing)?;
            let mut keep = Vec::new();
            if let Some(until) = overlap_until {
                keep.extend(r.previous.iter().filter(|(_, u)| parse_expires(u).is_ok_and(|t| now < t)).cloned());
                keep.push((r.hash.clone(), super::span::rfc3339(*until)));
            }
            r.previous = keep;
            r.hash = hash.clone();
            Ok(Some(r))
        }
    }
}

fn new_row(kind: Kind, e: &NewEntry) -> CredRow {
    CredRow {
        name: e.name.clone(),
        kind,
        hash: e.hash.clone(),
        previous: Vec::new(),
        user: e.user.clone(),
        roles: e.roles.clone(),
        permissions: e.permissions.clone(),
        allowed_ips: (!e.allowed_ips.is_empty()).then(|| e.allowed_ips.clone()),
        expires: e.expires.clone(),
        disabled: false,
        description: e.description.clone(),
        notes: e.notes.clone(),
        created_at: e.created_at.clone(),
        created_by: e.created_by.clone(),
    }
}

impl Store for PgStore {
    fn load(&self) -> Result<(CredentialsRaw, Version), String> {
        self.load_raw().map(|(raw, g)| (raw, gen_version(g)))
    }

    fn apply(&self, change: &Change, expected: Option<Version>, now: i64) -> Result<Applied, StoreError> {
        let env = self.env;
        let change = change.clone();
        let out: Result<Result<Applied, StoreError>, String> = self.run(move |mut c| async move {
            let t = c.transaction().await.map_err(pg_err)?;
            // Writers queue on the generation row: one write at a time, against what it read.
            let gen: i64 = t.query_one("SELECT generation FROM portcullis_meta FOR UPDATE", &[]).await.map_err(pg_err)?.get(0);
            if expected.is_some_and(|v| v != gen_version(gen)) {
                return Ok(Err(StoreError::Stale("the store changed since it was read (stale version); read it again".into())));
            }
            let sql = format!("SELECT {COLUMNS} FROM portcullis_credentials WHERE name = $1 FOR UPDATE");
            let old = t.query_opt(sql.as_str(), &[&change.name()]).await.map_err(pg_err)?.as_ref().map(row_of);
            let new = match changed_row(old, &change, now) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            // The loader's own validation of the one row, with every role and user.
            let mut roles_users = CredentialsRaw::default();
            for r in t.query("SELECT name, permissions FROM portcullis_roles", &[]).await.map_err(pg_err)? {
                roles_users.roles.insert(r.get(0), At::new(placed(&r.get::<_, Vec<String>>(1))));
            }
            for r in t.query("SELECT name, roles, permissions FROM portcullis_users ORDER BY position", &[]).await.map_err(pg_err)? {
                roles_users.users.push(UserRaw { name: At::new(r.get(0)), roles: placed(&r.get::<_, Vec<String>>(1)), permissions: placed(&r.get::<_, Vec<String>>(2)) });
            }
            let (store, warnings) = match &new {
                Some(row) => match validate_one(&roles_users, row, env, now) {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(StoreError::Invalid(e))),
                },
                None => (Default::default(), Vec::new()),
            };
            let written = match (&change, &new) {
                (Change::Create { .. }, Some(row)) => {
                    let stmt = t.prepare(INSERT).await.map_err(pg_err)?;
                    insert_row(&t, &stmt, row).await
                }
                (_, Some(r)) => t
                    .execute(
                        "UPDATE portcullis_credentials SET hash = $2, previous = $3, roles = $4, permissions = $5, allowed_ips = $6, disabled = $7, description = $8, notes = $9, version = version + 1 WHERE name = $1",
                        &[&r.name, &r.hash, &previous_json(&r.previous), &r.roles, &r.permissions, &r.allowed_ips, &r.disabled, &r.description, &r.notes],
                    )
                    .await
                    .map(|_| ())
                    .map_err(pg_err),
                (_, None) => t.execute("DELETE FROM portcullis_credentials WHERE name = $1", &[&change.name()]).await.map(|_| ()).map_err(pg_err),
            };
            if let Err(e) = written {
                // The unique index on API key hashes: another key has this hash.
                return Ok(Err(StoreError::Other(e)));
            }
            let gen: i64 = t.query_one("SELECT generation FROM portcullis_meta", &[]).await.map_err(pg_err)?.get(0);
            t.commit().await.map_err(pg_err)?;
            Ok(Ok(Applied { store, warnings, comments_kept: true, version: gen_version(gen) }))
        });
        out.map_err(StoreError::Other)?
    }
}

// ---------------------------------------------------------------------------------
// The loader's side.

/// The live set of a serving replica: once registered, a reload of the main config takes
/// its credentials from here (the replica's own copy, kept current by LISTEN/NOTIFY)
/// rather than reading the whole database again.
pub trait LiveSet: Send + Sync {
    /// The credentials in force, their warnings and the generation they reflect.
    fn current(&self) -> (crate::config::CredentialStore, Vec<String>, i64);
}

static LIVE: std::sync::OnceLock<Arc<dyn LiveSet>> = std::sync::OnceLock::new();

/// Registers the serving replica's live set (once).
pub fn register_live(live: Arc<dyn LiveSet>) {
    let _ = LIVE.set(live);
}

fn load_error(msg: String) -> ConfigErrors {
    ConfigErrors(vec![crate::config::ConfigError { transient: true, ..crate::config::ConfigError::new(std::path::Path::new("store"), None, msg) }])
}

/// The credentials for a load of a config whose store is PostgreSQL: the live set when
/// this process serves one, else read from the database (`check`, `explain`, the first
/// load of `serve`). A database that cannot be reached is an error naming it.
pub fn credentials_for_load(
    url: Result<String, String>,
    env: Environment,
    now: i64,
) -> Result<(crate::config::CredentialStore, Vec<String>, i64), ConfigErrors> {
    if let Some(live) = LIVE.get() {
        return Ok(live.current());
    }
    let url = url.map_err(load_error)?;
    let store = PgStore::open(&url, env).map_err(|e| load_error(format!("the PostgreSQL store: {e}")))?;
    let (raw, generation) = store.load_raw().map_err(|e| load_error(format!("the PostgreSQL store: {e}")))?;
    let (creds, warnings) = config::credentials_from_raw(std::path::Path::new("the PostgreSQL store"), &raw, env, now)?;
    *FIRST_READ.lock().unwrap_or_else(|p| p.into_inner()) = Some((raw, generation));
    Ok((creds, warnings, generation))
}

/// The rows the last load read from the database (before a live set was registered).
static FIRST_READ: std::sync::Mutex<Option<(CredentialsRaw, i64)>> = std::sync::Mutex::new(None);

/// The rows and generation the snapshot of `serve`'s start was built from, for the
/// replica's sync to start from (rather than read and validate everything again).
pub fn take_first_read() -> Option<(CredentialsRaw, i64)> {
    FIRST_READ.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Validates one credential row as the loader does (with `roles_users`' roles and users).
pub fn validate_row(roles_users: &CredentialsRaw, row: &CredRow, env: Environment, now: i64) -> Result<crate::config::CredentialStore, ConfigErrors> {
    validate_one(roles_users, row, env, now).map(|(s, _)| s)
}
