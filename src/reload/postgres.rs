//! A replica's sync with the PostgreSQL store (SPEC §10): it holds a LISTEN connection,
//! applies each changed credential to a copy of the snapshot in force (one row read and
//! validated, whatever the size of the store), re-reads everything when roles or users
//! change or every `poll` seconds when the generation moved (a safety net under NOTIFY),
//! and swaps the new snapshot as a reload does.
//!
//! **Fail static.** When the database cannot be reached the snapshot in force keeps
//! serving — allowed stays allowed, denied stays denied — `portcullis_store_up` is 0, and
//! one error is logged (not one per attempt); it reconnects every second, and when the
//! database is back it catches up at once and `portcullis_store_up` is 1 again.
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio_postgres::{AsyncMessage, Client};

use crate::config::raw::CredentialsRaw;
use crate::config::validate::parse_sha256;
use crate::config::{CredentialStore, Environment, Shared, Snapshot};
use crate::store::postgres as pg;
use crate::store::row::{self, CredRow};
use crate::store::Kind;

/// More notifications than this in one batch: read everything instead.
const BATCH_LIMIT: usize = 1000;

/// The sync of one replica.
pub struct PgSync {
    url: String,
    shared: Shared,
    poll: Duration,
    env: Environment,
    generation: AtomicI64,
    /// The rows as last applied (roles, users, credentials).
    raw: Mutex<CredentialsRaw>,
    up: AtomicBool,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl PgSync {
    /// The sync for `shared`, whose snapshot was loaded from the database at `generation`
    /// with the rows `raw` (`-1` and no rows: read everything at the first connection).
    /// `metrics` follow each swap and the store's reachability (`portcullis_store_up`).
    pub fn new(
        url: String,
        shared: Shared,
        poll: Duration,
        raw: CredentialsRaw,
        generation: i64,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Arc<PgSync> {
        let env = shared.load().settings.environment;
        Arc::new(PgSync {
            url,
            shared,
            poll,
            env,
            generation: AtomicI64::new(generation),
            raw: Mutex::new(raw),
            up: AtomicBool::new(true),
            metrics,
        })
    }

    fn raw(&self) -> std::sync::MutexGuard<'_, CredentialsRaw> {
        self.raw.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_up(&self, up: bool, why: Option<&str>) {
        let was = self.up.swap(up, Ordering::SeqCst);
        if was != up {
            if up {
                tracing::info!("the PostgreSQL store is reachable again; changes flow again");
            } else {
                tracing::error!(error = why.unwrap_or(""), "the PostgreSQL store is unreachable; the last good snapshot keeps serving (fail static)");
            }
            if let Some(m) = &self.metrics {
                m.set_store_up(up);
            }
        }
    }

    /// Swaps in `creds` at `generation` on top of the snapshot in force. `changed`: the
    /// only credentials that differ (row by row), else everything may have.
    fn swap(&self, creds: CredentialStore, warnings: Vec<String>, generation: i64, changed: Option<&[String]>) {
        let _serial = super::SWAP.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.shared.load_full();
        let snap = with_credentials(&old, creds, warnings, generation);
        match changed {
            Some(names) => {
                if let Some(m) = &self.metrics {
                    m.carry_labels(&old, &snap, names);
                }
                tracing::info!(credentials = %names.join(", "), generation, "credentials changed in the PostgreSQL store; in force");
            }
            None => {
                let diff = super::diff::diff(&old, &snap);
                if !diff.is_empty() {
                    tracing::info!(changes = %diff, generation, "the PostgreSQL store was read again; in force");
                }
            }
        }
        self.generation.store(generation, Ordering::SeqCst);
        let snap = Arc::new(snap);
        self.shared.store(snap.clone());
        if let Some(m) = &self.metrics {
            m.on_snapshot(&snap, crate::config::unix_now());
            m.set_store_up(true);
        }
    }

    /// Reads everything and swaps it in (start, roles or users changed, the poll found a
    /// new generation, after a reconnect).
    async fn full(&self, c: &Client) -> Result<(), String> {
        let (raw, generation) = pg::read_all(c).await?;
        let now = crate::config::unix_now();
        match crate::config::credentials_from_raw(std::path::Path::new("the PostgreSQL store"), &raw, self.env, now) {
            Ok((creds, warnings)) => {
                *self.raw() = raw;
                self.swap(creds, warnings, generation, None);
            }
            Err(e) => tracing::error!(errors = %e, "the PostgreSQL store holds credentials the sidecar refuses; the last good snapshot keeps serving"),
        }
        Ok(())
    }

    /// Applies changed credentials one by one onto a copy of the snapshot in force.
    async fn rows(&self, c: &Client, names: &[String]) -> Result<(), String> {
        let generation: i64 = c.query_one("SELECT generation FROM portcullis_meta", &[]).await.map_err(|e| e.to_string())?.get(0);
        let now = crate::config::unix_now();
        let mut creds = self.shared.load().credentials.clone();
        for name in names {
            let new = pg::read_one(c, name).await?;
            let mut raw = self.raw();
            let old = row::row_in(&raw, name);
            let one = match &new {
                Some(row) => match pg::validate_row(&raw, row, self.env, now) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(credential = %name, errors = %e, "a credential in the PostgreSQL store is refused; its previous state keeps serving");
                        continue;
                    }
                },
                None => None,
            };
            match patch(&creds, name, old.as_ref(), one) {
                Ok(next) => {
                    creds = next;
                    set_row(&mut raw, name, new.as_ref());
                }
                Err(e) => tracing::error!(credential = %name, error = %e, "a credential in the PostgreSQL store is refused; its previous state keeps serving"),
            }
        }
        self.swap(creds, Vec::new(), generation, Some(names));
        Ok(())
    }

    /// One connection's life: LISTEN, catch up, then apply what is heard.
    async fn session(&self, shutdown: &mut ShutdownWatch) -> Result<bool, String> {
        let (client, mut conn) = pg::config_of(&self.url)?.connect(pg::make_tls()).await.map_err(|e| format!("cannot connect: {e}"))?;
        let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = tx.send(Some(n.payload().to_string()));
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        });
        let result = async {
            client.batch_execute("LISTEN portcullis").await.map_err(|e| e.to_string())?;
            // Whatever happened while not listening.
            let g: i64 = client.query_one("SELECT generation FROM portcullis_meta", &[]).await.map_err(|e| e.to_string())?.get(0);
            if g != self.generation.load(Ordering::SeqCst) {
                self.full(&client).await?;
            }
            self.set_up(true, None);
            let mut poll = tokio::time::interval(self.poll);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                tokio::select! {
                    changed = shutdown.changed() => {
                        if changed.is_err() || *shutdown.borrow() {
                            return Ok(true);
                        }
                    }
                    msg = heard.recv() => {
                        let Some(Some(first)) = msg else { return Err("the connection to the database was lost".to_string()) };
                        let mut batch = vec![first];
                        while let Ok(Some(more)) = heard.try_recv() {
                            batch.push(more);
                        }
                        self.heard(&client, batch).await?;
                    }
                    _ = poll.tick() => {
                        let g: i64 = client.query_one("SELECT generation FROM portcullis_meta", &[]).await.map_err(|e| e.to_string())?.get(0);
                        if g != self.generation.load(Ordering::SeqCst) {
                            tracing::warn!(generation = g, "the poll found changes no notification announced; reading the store again");
                            self.full(&client).await?;
                        }
                    }
                }
            }
        }
        .await;
        driver.abort();
        result
    }

    async fn heard(&self, c: &Client, batch: Vec<String>) -> Result<(), String> {
        let mut names = Vec::new();
        let mut everything = batch.len() > BATCH_LIMIT;
        for p in &batch {
            match p.split_once(':') {
                Some(("portcullis_credentials", name)) => {
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_string());
                    }
                }
                _ => everything = true,
            }
        }
        if everything {
            self.full(c).await
        } else {
            self.rows(c, &names).await
        }
    }
}

impl pg::LiveSet for PgSync {
    fn current(&self) -> (CredentialStore, Vec<String>, i64) {
        (self.shared.load().credentials.clone(), Vec::new(), self.generation.load(Ordering::SeqCst))
    }
}

/// The background service around a [`PgSync`].
pub struct PgSyncService(pub Arc<PgSync>);

#[async_trait]
impl BackgroundService for PgSyncService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let sync = &self.0;
        loop {
            match sync.session(&mut shutdown).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => sync.set_up(false, Some(&e)),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The snapshot in force with other credentials (everything else shared with it).
pub fn with_credentials(old: &Snapshot, credentials: CredentialStore, warnings: Vec<String>, generation: i64) -> Snapshot {
    let files_hash = old.content_hash.split(":pg:").next().unwrap_or("");
    Snapshot {
        settings: old.settings.clone(),
        routes: old.routes.clone(),
        credentials,
        tokens: old.tokens.clone(),
        warnings,
        files: old.files.clone(),
        content_hash: format!("{files_hash}:pg:{generation}"),
        token_cache: Default::default(),
        metric_labels: Default::default(),
    }
}

/// `store` with credential `name` replaced by the one credential of `new` (validated
/// alone), or removed (`None`); `old` is its row as last applied. A copy: the snapshot in
/// force is never touched.
pub fn patch(store: &CredentialStore, name: &str, old: Option<&CredRow>, new: Option<CredentialStore>) -> Result<CredentialStore, String> {
    let mut s = store.clone();
    let at = s.all.iter().position(|c| &*c.id == name);
    if let Some(old) = old {
        match old.kind {
            Kind::ApiKey => {
                if let Some(h) = parse_sha256(&old.hash) {
                    s.by_key_hash.remove(&h);
                }
                for (ph, _) in &old.previous {
                    if let Some(h) = parse_sha256(ph) {
                        s.previous_key_hashes.remove(&h);
                    }
                }
            }
            Kind::Client => {
                s.clients.remove(name);
                s.previous_secrets.remove(name);
            }
        }
    }
    match new {
        None => {
            if let Some(i) = at {
                s.all.remove(i);
            }
        }
        Some(one) => {
            let cred = one.all.first().cloned().ok_or("the row did not validate to a credential")?;
            for (h, c) in one.by_key_hash {
                if s.by_key_hash.contains_key(&h) || s.previous_key_hashes.contains_key(&h) {
                    return Err("its key_hash is the same as another key's".into());
                }
                s.by_key_hash.insert(h, c);
            }
            for (h, v) in one.previous_key_hashes {
                if s.by_key_hash.contains_key(&h) || s.previous_key_hashes.insert(h, v).is_some() {
                    return Err("a previous key hash is the same as another key's".into());
                }
            }
            s.clients.extend(one.clients);
            s.previous_secrets.extend(one.previous_secrets);
            match at {
                Some(i) => s.all[i] = cred,
                None => s.all.push(cred),
            }
        }
    }
    Ok(s)
}

/// Updates the cached rows: `name` is now `row` (or gone).
fn set_row(raw: &mut CredentialsRaw, name: &str, row: Option<&CredRow>) {
    raw.clients.retain(|c| *c.id != name);
    raw.api_keys.retain(|k| *k.name != name);
    if let Some(r) = row {
        row::push_row(raw, r);
    }
}

/// Last-use times with the PostgreSQL store (SPEC §10): once a minute, and at shutdown,
/// this replica's changed times go to the database in one statement, and the others'
/// come back (so the console shows the latest use on any replica, a minute stale at most).
pub struct LastUsedSync {
    pub table: Arc<crate::last_used::LastUsed>,
    pub store: Arc<crate::store::postgres::PgStore>,
}

impl LastUsedSync {
    fn exchange(&self) {
        if let Some(times) = self.table.take_changed() {
            if let Err(e) = self.store.save_last_used(times) {
                tracing::warn!(error = %e, "cannot write last-use times to the database; trying again in a minute");
                self.table.record_dirty();
            }
        }
        if let Ok(all) = self.store.load_last_used() {
            for (name, t) in all {
                self.table.merge(&name, t);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for LastUsedSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    self.exchange();
                    return;
                }
            }
            // The store's calls block (on its own runtime): off this one's worker.
            let (table, store) = (self.table.clone(), self.store.clone());
            let _ = tokio::task::spawn_blocking(move || LastUsedSync { table, store }.exchange()).await;
        }
    }
}
