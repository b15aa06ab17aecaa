//! Prometheus metrics (SPEC §8), in a [`Registry`] of our own (never the process-global
//! one, so a library that registers there cannot leak into `/metrics`).
//!
//! **Cardinality is bounded by config.** Every label value is a route id, a credential
//! name, a reason code or a member of a fixed enum. A value a caller could influence —
//! an unknown route, a credential name the current snapshot does not hold, an external
//! token's subject — is replaced by `""` (the Prometheus convention for "no value"), so
//! no request can create a new series. Per-credential gauges follow the config in force
//! exactly; counters keep the series of routes and credentials that a reload deleted
//! until restart (history, bounded by the configs seen).
//!
//! Families (all prefixed `portcullis_`):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `requests_total` | counter | `route`, `credential`, `outcome`, `status_class` |
//! | `request_duration_seconds` | histogram | `route` |
//! | `auth_duration_seconds` | histogram | `kind` |
//! | `denials_total` | counter | `reason` |
//! | `shadow_denials_total` | counter | `reason` |
//! | `upstream_errors_total` | counter | `kind` (`unavailable`, `timeout`) |
//! | `tokens_issued_total` | counter | `client` |
//! | `token_requests_refused_total` | counter | `reason` |
//! | `config_reloads_total` | counter | `result` (`success`, `failure`) |
//! | `config_last_reload_success_timestamp_seconds` | gauge | |
//! | `config_last_reload_successful` | gauge | |
//! | `store_up` | gauge | | (1 while the credential store is reachable; the file store is always 1)
//! | `config_info` | gauge | `hash` |
//! | `credential_expiry_timestamp_seconds` | gauge | `credential`, `kind` |
//! | `credential_last_used_timestamp_seconds` | gauge | `credential`, `kind` |
//! | `credentials` | gauge | `kind`, `state` |
//! | `credentials_expiring` | gauge | `kind`, `within` (`7d`, `30d`): active ones expiring that soon |
//! | `credentials_soonest_expiry_timestamp_seconds` | gauge | `kind`: the active credential expiring first |
//!
//! **Per-credential series** (`credential_*`, and the `credential`/`client` labels of
//! `requests_total` and `tokens_issued_total`) are on for up to [`PER_CREDENTIAL_AUTO_LIMIT`]
//! credentials and off above, unless `metrics.per_credential` says otherwise: 100,000
//! credentials would mean hundreds of thousands of series on every scrape of every pod.
//! Expiry alerting then works from `credentials_expiring` and the soonest expiry.
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::{unix_now, Credential, CredentialKind, FastMap, Snapshot};
use crate::rejection::Reason;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The label value used when there is no (known) route or credential.
pub const NONE: &str = "";

/// Whole requests: sub-millisecond decisions up to the default 30 s upstream timeout.
const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Decisions: an API key lookup takes microseconds, an argon2id check tens of milliseconds.
const AUTH_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];


/// How a request ended, as the `outcome` label and the audit log's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded upstream (whatever the upstream answered).
    Allowed,
    /// Answered by the sidecar with a 4xx rejection.
    Denied,
    /// The sidecar or the upstream failed (5xx from the sidecar, or no response).
    Error,
    /// Would have been denied, but forwarded because enforcement is off (shadow mode).
    ShadowDenied,
    /// The client hung up before the answer (status 499): not a sidecar error.
    ClientClosed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] =
        [Outcome::Allowed, Outcome::Denied, Outcome::Error, Outcome::ShadowDenied, Outcome::ClientClosed];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
            Outcome::ShadowDenied => "shadow_denied",
            Outcome::ClientClosed => "client_closed",
        }
    }
}

/// What one request contributes to the metrics: plain values, typically taken from the
/// proxy's `logging` phase. Values not in the current config are recorded as `""`.
#[derive(Debug, Clone, Copy)]
pub struct RequestObservation<'a> {
    /// The matched route's id (`Route.id`), if any.
    pub route: Option<&'a str>,
    /// The authenticated credential's name, if any.
    pub credential: Option<&'a str>,
    /// The authenticated credential's kind; a name only counts with the kind it has in config.
    pub kind: Option<CredentialKind>,
    pub outcome: Outcome,
    /// The status sent downstream; 0 when none was sent.
    pub status: u16,
    /// Why the sidecar answered itself, if it did.
    pub reason: Option<Reason>,
    /// From the start of the request to the end of the response.
    pub duration: Duration,
    /// Now, unix seconds (for the credential's last use).
    pub now: i64,
}

/// A credential's lifecycle state, the `state` label of `portcullis_credentials`.
/// Each credential has exactly one, so the states add up to the number configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CredentialState {
    Active,
    Disabled,
    Expired,
    /// An API key linked to a user that no longer exists: rejected (fail closed).
    UserMissing,
}

impl CredentialState {
    const ALL: [CredentialState; 4] = [
        CredentialState::Active,
        CredentialState::Disabled,
        CredentialState::Expired,
        CredentialState::UserMissing,
    ];

    /// Expired wins over disabled (it cannot be undone by `enable`), and both win over
    /// a missing user.
    fn of(c: &Credential, now: i64) -> Self {
        if c.is_expired(now) {
            CredentialState::Expired
        } else if c.disabled {
            CredentialState::Disabled
        } else if c.user_missing {
            CredentialState::UserMissing
        } else {
            CredentialState::Active
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CredentialState::Active => "active",
            CredentialState::Disabled => "disabled",
            CredentialState::Expired => "expired",
            CredentialState::UserMissing => "user_missing",
        }
    }
}

/// The kinds a configured credential can have (external tokens are not configured).
const CONFIGURED_KINDS: [CredentialKind; 2] = [CredentialKind::Client, CredentialKind::ApiKey];

/// The `kind` label of `portcullis_auth_duration_seconds`.
fn auth_kind(kind: Option<CredentialKind>) -> &'static str {
    kind.map_or("none", CredentialKind::as_str)
}

/// The index of `kind` in [`Metrics::auth_by_kind`].
fn auth_kind_index(kind: Option<CredentialKind>) -> usize {
    match kind {
        None => 0,
        Some(CredentialKind::Client) => 1,
        Some(CredentialKind::ApiKey) => 2,
        Some(CredentialKind::External) => 3,
    }
}

/// The index of [`status_class`]'s answer.
fn status_class_index(status: u16) -> u8 {
    match status {
        100..=599 => (status / 100) as u8,
        _ => 0,
    }
}

/// `2xx`…`5xx`; `none` when no response was sent.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Per-credential series are on by default up to this many credentials.
pub const PER_CREDENTIAL_AUTO_LIMIT: usize = 1000;

/// One configured credential, with its last-use gauge resolved once per snapshot (none
/// when per-credential series are off).
#[derive(Clone)]
struct KnownCredential {
    credential: Arc<Credential>,
    last_used: Option<Gauge>,
}

/// The label values a snapshot allows, kept in that snapshot (`Snapshot::metric_labels`):
/// a request records its metrics with the labels of the very snapshot it was decided by,
/// so there is no second copy that could disagree with it. Built once per snapshot
/// ([`Metrics::labels`]), with the last-use gauges pre-resolved.
///
/// The children of `requests_total` and `request_duration_seconds` a request uses are
/// kept per thread ([`Handles`]), keyed by these label values' addresses.
#[derive(Default)]
pub struct Labels {
    /// Which labels these are, for [`Handles`] (0: none in force).
    id: u64,
    routes: std::collections::HashSet<Arc<str>, foldhash::fast::RandomState>,
    credentials: FastMap<Arc<str>, KnownCredential>,
    /// Per-credential series and label values are kept.
    per_credential: bool,
}

/// A new [`Labels::id`] or [`Metrics`] id: unique in the process.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The metric children this thread used last (issue 15): `with_label_values` hashes every
/// label value and takes the family's lock on each call, three times a request. A slot
/// is keyed by the addresses of the label values, which are the [`Labels`]' own strings
/// (or the static [`NONE`]): unique while those labels live, and the whole table is
/// emptied when a request comes with other labels (a reload) or another [`Metrics`].
/// A `requests_total` child's labels: route and credential by address, outcome, status class.
type RequestKey = (usize, usize, u8, u8);

struct Handles {
    /// ([`Metrics`] id, [`Labels::id`]) the slots belong to.
    epoch: (u64, u64),
    /// `requests_total` by (route, credential, outcome, status class).
    requests: [Option<(RequestKey, IntCounter)>; 64],
    /// `request_duration_seconds` by route.
    durations: [Option<(usize, Histogram)>; 16],
}

impl Handles {
    const fn new() -> Self {
        Handles { epoch: (0, 0), requests: [const { None }; 64], durations: [const { None }; 16] }
    }

    fn enter(&mut self, epoch: (u64, u64)) {
        if self.epoch != epoch {
            *self = Handles::new();
            self.epoch = epoch;
        }
    }

    fn slot(key: usize, bits: u32) -> usize {
        key.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> (usize::BITS - bits)
    }

    fn request(&mut self, key: RequestKey, make: impl FnOnce() -> IntCounter) -> &IntCounter {
        let mixed = key.0 ^ key.1.rotate_left(29) ^ (usize::from(key.2) << 3 | usize::from(key.3));
        let slot = &mut self.requests[Self::slot(mixed, 6)];
        if !matches!(slot, Some((k, _)) if *k == key) {
            *slot = Some((key, make()));
        }
        &slot.as_ref().expect("just filled").1
    }

    fn duration(&mut self, route: usize, make: impl FnOnce() -> Histogram) -> &Histogram {
        let slot = &mut self.durations[Self::slot(route, 4)];
        if !matches!(slot, Some((k, _)) if *k == route) {
            *slot = Some((route, make()));
        }
        &slot.as_ref().expect("just filled").1
    }
}

thread_local! {
    static HANDLES: RefCell<Handles> = const { RefCell::new(Handles::new()) };
}

impl std::fmt::Debug for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Labels").field("routes", &self.routes.len()).field("credentials", &self.credentials.len()).finish()
    }
}

/// What the metrics know of the snapshot in force, for the config hash series, the
/// removal of series of credentials that left, and the per-scrape state counts.
#[derive(Default)]
struct InForce {
    hash: String,
    labels: Arc<Labels>,
}

/// All portcullis metrics, in their own registry. Cheap to share behind an `Arc`; every
/// method takes `&self`.
pub struct Metrics {
    /// Tells this registry's children apart in [`Handles`].
    id: u64,
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// `auth_duration_seconds`'s children, by [`auth_kind_index`].
    auth_by_kind: [Histogram; 4],
    /// One counter per denial reason (the 4xx codes of [`Reason::ALL`]).
    denials: Vec<(Reason, IntCounter)>,
    /// Like `denials`, for shadow mode.
    shadow_denials: Vec<(Reason, IntCounter)>,
    upstream_unavailable: IntCounter,
    upstream_timeout: IntCounter,
    tokens_issued: IntCounterVec,
    token_refused: IntCounterVec,
    audit_dropped: IntCounter,
    reloads_success: IntCounter,
    reloads_failure: IntCounter,
    last_reload_success: Gauge,
    last_reload_successful: IntGauge,
    store_up: IntGauge,
    config_info: IntGaugeVec,
    credential_expiry: GaugeVec,
    credential_last_used: GaugeVec,
    credentials: IntGaugeVec,
    credentials_expiring: IntGaugeVec,
    soonest_expiry: GaugeVec,
    /// Serializes snapshot changes and state recounts.
    update: Mutex<InForce>,
    config_loaded: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `c` in `r` and returns it. Every definition here is static and unique, so
/// this cannot fail unless the code above is wrong.
fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric definitions are static and unique");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    reg(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition"),
    )
}

fn histogram_vec(r: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, HistogramVec::new(opts, labels).expect("valid histogram definition"))
}

impl Metrics {
    /// Every family registered; the fixed-label series (reason codes, reload results,
    /// upstream error kinds, credential states) start at 0 so that `rate()` and alerts
    /// see them before the first event. Per-credential series appear with
    /// [`Metrics::on_snapshot`].
    pub fn new() -> Metrics {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "portcullis_requests_total",
            "Requests by route template, credential, outcome (allowed, denied, error, shadow_denied, client_closed) \
             and status class. route and credential are \"\" when none matched.",
            &["route", "credential", "outcome", "status_class"],
        );
        let request_duration = histogram_vec(
            &r,
            "portcullis_request_duration_seconds",
            "Time from the start of a request to the end of its response, upstream included, by route template.",
            REQUEST_BUCKETS,
            &["route"],
        );
        let auth_duration = histogram_vec(
            &r,
            "portcullis_auth_duration_seconds",
            "Time the sidecar spent deciding a request (sanity checks, authentication, authorization), \
             by the kind of credential that authenticated (none: no credential was accepted).",
            AUTH_BUCKETS,
            &["kind"],
        );
        let denials_vec = counter_vec(
            &r,
            "portcullis_denials_total",
            "Requests denied by the sidecar (4xx), by reason code. Upstream failures are in \
             portcullis_upstream_errors_total.",
            &["reason"],
        );
        let shadow_vec = counter_vec(
            &r,
            "portcullis_shadow_denials_total",
            "Requests that would have been denied but were forwarded (shadow mode), by reason code.",
            &["reason"],
        );
        let upstream_errors = counter_vec(
            &r,
            "portcullis_upstream_errors_total",
            "Requests the upstream failed: unavailable (502) or timeout (504).",
            &["kind"],
        );
        let tokens_issued = counter_vec(
            &r,
            "portcullis_tokens_issued_total",
            "Access tokens issued by the token endpoint, by client.",
            &["client"],
        );
        let token_refused = counter_vec(
            &r,
            "portcullis_token_requests_refused_total",
            "Token requests refused, by OAuth error code (other: any code not listed).",
            &["reason"],
        );
        let audit_dropped = reg(
            &r,
            IntCounter::new(
                "portcullis_audit_lines_dropped_total",
                "Audit lines dropped because the writer's queue was full (the request path never waits for the log).",
            )
            .expect("valid counter definition"),
        );
        let reloads = counter_vec(
            &r,
            "portcullis_config_reloads_total",
            "Config reload attempts by result (the initial load is not counted).",
            &["result"],
        );
        let last_reload_success = reg(
            &r,
            Gauge::new(
                "portcullis_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load (the initial one or a reload).",
            )
            .expect("valid gauge definition"),
        );
        let last_reload_successful = reg(
            &r,
            IntGauge::new(
                "portcullis_config_last_reload_successful",
                "1 if the last config load succeeded, 0 if it failed (the previous config keeps serving).",
            )
            .expect("valid gauge definition"),
        );
        let store_up = reg(
            &r,
            IntGauge::new(
                "portcullis_store_up",
                "1 while the credential store is reachable, 0 while the PostgreSQL store is not (the last good snapshot keeps serving).",
            )
            .expect("valid gauge definition"),
        );
        store_up.set(1);
        let config_info = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "portcullis_config_info",
                    "The config in force: SHA-256 of its files, always 1.",
                ),
                &["hash"],
            )
            .expect("valid gauge definition"),
        );
        let credential_expiry = gauge_vec(
            &r,
            "portcullis_credential_expiry_timestamp_seconds",
            "Unix time at which each configured credential expires.",
            &["credential", "kind"],
        );
        let credential_last_used = gauge_vec(
            &r,
            "portcullis_credential_last_used_timestamp_seconds",
            "Unix time each configured credential last authenticated a forwarded request or obtained a \
             token; 0 if not since this process started.",
            &["credential", "kind"],
        );
        let credentials = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "portcullis_credentials",
                    "Configured credentials by kind and state (active, disabled, expired, user_missing).",
                ),
                &["kind", "state"],
            )
            .expect("valid gauge definition"),
        );

        let credentials_expiring = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "portcullis_credentials_expiring",
                    "Active credentials expiring within 7 or 30 days, by kind (expiry alerting without per-credential series).",
                ),
                &["kind", "within"],
            )
            .expect("valid gauge definition"),
        );
        let soonest_expiry = reg(
            &r,
            GaugeVec::new(
                Opts::new(
                    "portcullis_credentials_soonest_expiry_timestamp_seconds",
                    "When the active credential of this kind that expires first expires (unix seconds); absent when there is none.",
                ),
                &["kind"],
            )
            .expect("valid gauge definition"),
        );
        let denial_reasons = || Reason::ALL.into_iter().filter(|r| r.status() < 500);
        let denials = denial_reasons()
            .map(|r| (r, denials_vec.with_label_values(&[r.code()])))
            .collect();
        let shadow_denials = denial_reasons()
            .map(|r| (r, shadow_vec.with_label_values(&[r.code()])))
            .collect();
        for code in crate::token::endpoint::OAuthCode::ALL {
            token_refused.with_label_values(&[code.as_str()]);
        }
        for kind in CONFIGURED_KINDS {
            for state in CredentialState::ALL {
                credentials.with_label_values(&[kind.as_str(), state.as_str()]).set(0);
            }
        }
        for kind in [
            Some(CredentialKind::Client),
            Some(CredentialKind::ApiKey),
            Some(CredentialKind::External),
            None,
        ] {
            auth_duration.with_label_values(&[auth_kind(kind)]);
        }
        let auth_by_kind = [None, Some(CredentialKind::Client), Some(CredentialKind::ApiKey), Some(CredentialKind::External)]
            .map(|k| auth_duration.with_label_values(&[auth_kind(k)]));
        Metrics {
            id: next_id(),
            auth_by_kind,
            upstream_unavailable: upstream_errors.with_label_values(&["unavailable"]),
            upstream_timeout: upstream_errors.with_label_values(&["timeout"]),
            reloads_success: reloads.with_label_values(&["success"]),
            reloads_failure: reloads.with_label_values(&["failure"]),
            registry: r,
            requests,
            request_duration,
            denials,
            shadow_denials,
            tokens_issued,
            token_refused,
            audit_dropped,
            last_reload_success,
            last_reload_successful,
            store_up,
            config_info,
            credential_expiry,
            credential_last_used,
            credentials,
            credentials_expiring,
            soonest_expiry,
            update: Mutex::new(InForce::default()),
            config_loaded: AtomicBool::new(false),
        }
    }

    /// The registry, for tests or to add collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether a snapshot has been put in force ([`Metrics::on_snapshot`] was called).
    pub fn has_config(&self) -> bool {
        self.config_loaded.load(Ordering::Acquire)
    }

    /// `snap` is now in force (at start, or after a successful reload): the known routes
    /// and credentials become exactly those of `snap` — series of deleted credentials
    /// disappear, those of remaining ones keep their last-use time — `config_info`
    /// carries only `snap`'s hash, and `now` (unix seconds) is the time of the last good
    /// load. `now` also judges which credentials are expired. Counts no reload: at start
    /// nothing was reloaded; after a reload, call [`Metrics::on_reload`] too.
    pub fn on_snapshot(&self, snap: &Snapshot, now: i64) {
        let mut in_force = self.update.lock().unwrap_or_else(|p| p.into_inner());

        // Add the new series before removing the old ones, so that a concurrent scrape
        // never sees the family empty.
        self.config_info.with_label_values(&[&snap.content_hash]).set(1);
        if !in_force.hash.is_empty() && in_force.hash != snap.content_hash {
            let _ = self.config_info.remove_label_values(&[in_force.hash.as_str()]);
        }
        in_force.hash.clone_from(&snap.content_hash);

        let labels = self.labels(snap).clone();
        for (name, old) in &in_force.labels.credentials {
            let kept = labels.per_credential && labels.credentials.get(name).is_some_and(|c| c.credential.kind == old.credential.kind);
            if !kept {
                let names = [name.as_ref(), old.credential.kind.as_str()];
                let _ = self.credential_expiry.remove_label_values(&names);
                let _ = self.credential_last_used.remove_label_values(&names);
            }
        }
        in_force.labels = labels;
        self.set_credential_counts(&in_force.labels, now);
        self.last_reload_success.set(now as f64);
        self.last_reload_successful.set(1);
        self.config_loaded.store(true, Ordering::Release);
    }

    /// The label values `snap` allows, built on first use and kept in the snapshot. Builds
    /// the per-credential series (present from the start, so that rate() and absence
    /// alerts work); a credential that stays keeps its children, with their values.
    pub fn labels<'s>(&self, snap: &'s Snapshot) -> &'s Arc<Labels> {
        snap.metric_labels.get_or_init(|| {
            let per_credential = snap.settings.per_credential_metrics.unwrap_or(snap.credentials.all.len() <= PER_CREDENTIAL_AUTO_LIMIT);
            let mut credentials = FastMap::with_capacity_and_hasher(snap.credentials.all.len(), Default::default());
            for c in &snap.credentials.all {
                credentials.insert(c.id.clone(), self.known(c, per_credential));
            }
            let routes = snap.routes.routes.iter().map(|r| r.id.clone()).collect();
            Arc::new(Labels { id: next_id(), routes, credentials, per_credential })
        })
    }

    /// A credential's series, made present (so that rate() and absence alerts work).
    fn known(&self, c: &Arc<Credential>, per_credential: bool) -> KnownCredential {
        if !per_credential {
            return KnownCredential { credential: c.clone(), last_used: None };
        }
        let names = [c.id.as_ref(), c.kind.as_str()];
        self.credential_expiry.with_label_values(&names).set(c.expires_at as f64);
        let last_used = self.credential_last_used.with_label_values(&names);
        if c.kind == CredentialKind::Client {
            self.tokens_issued.with_label_values(&[c.id.as_ref()]);
        }
        KnownCredential { credential: c.clone(), last_used: Some(last_used) }
    }

    /// Builds `new`'s labels from `old`'s when only the credentials named in `changed`
    /// differ (the PostgreSQL store's row-by-row changes): the series of the others are
    /// kept as they are, so a one-credential change costs one credential's series, not
    /// a rebuild for every credential.
    pub fn carry_labels(&self, old: &Snapshot, new: &Snapshot, changed: &[String]) {
        let Some(prev) = old.metric_labels.get() else {
            return;
        };
        let mut credentials = prev.credentials.clone();
        for name in changed {
            credentials.remove(name.as_str());
            if let Some(c) = new.credentials.find(name) {
                credentials.insert(c.id.clone(), self.known(c, prev.per_credential));
            }
        }
        let _ = new.metric_labels.set(Arc::new(Labels { id: next_id(), routes: prev.routes.clone(), credentials, per_credential: prev.per_credential }));
    }

    /// A reload attempt finished: counts it by result and records whether it succeeded;
    /// on success `now` is the time of the last good load (a reload that found the files
    /// unchanged is a success too). When it put a new snapshot in force, call
    /// [`Metrics::on_snapshot`] as well.
    /// Whether the credential store is reachable (`portcullis_store_up`).
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(up as i64);
    }

    pub fn on_reload(&self, success: bool, now: i64) {
        if success {
            self.reloads_success.inc();
            self.last_reload_success.set(now as f64);
            self.last_reload_successful.set(1);
        } else {
            self.reloads_failure.inc();
            self.last_reload_successful.set(0);
        }
    }

    /// Records one finished request. Cheap: one lock-free load of the label table, two
    /// hash lookups, and the prometheus crate's own per-child lookups.
    pub fn observe_request(&self, snap: &Snapshot, r: &RequestObservation<'_>) {
        let labels = self.labels(snap);
        let route = r
            .route
            .and_then(|id| labels.routes.get(id))
            .map_or(NONE, |id| id.as_ref());
        let known = match (r.credential, r.kind) {
            (Some(name), Some(kind)) => labels
                .credentials
                .get_key_value(name)
                .filter(|(_, c)| c.credential.kind == kind),
            _ => None,
        };
        let credential = known.filter(|_| labels.per_credential).map_or(NONE, |(name, _)| name.as_ref());
        let epoch = (self.id, labels.id);
        let route_key = route.as_ptr() as usize;
        if let Some(reason) = r.reason {
            match reason {
                Reason::UpstreamUnavailable => self.upstream_unavailable.inc(),
                Reason::UpstreamTimeout => self.upstream_timeout.inc(),
                _ => {
                    let per_reason = match r.outcome {
                        Outcome::ShadowDenied => &self.shadow_denials,
                        _ => &self.denials,
                    };
                    if let Some((_, c)) = per_reason.iter().find(|(r, _)| *r == reason) {
                        c.inc();
                    }
                }
            }
        }
        // A credential is "used" when it got a request through, not when it was refused.
        if matches!(r.outcome, Outcome::Allowed | Outcome::ShadowDenied) {
            if let Some(g) = known.and_then(|(_, c)| c.last_used.as_ref()) {
                g.set(r.now as f64);
            }
        }
        // The duration, then the count, in one visit to the thread's handles. Last: a
        // scrape that sees the request counted sees all of its other effects.
        let key = (route_key, credential.as_ptr() as usize, r.outcome as u8, status_class_index(r.status));
        HANDLES.with_borrow_mut(|h| {
            h.enter(epoch);
            h.duration(route_key, || self.request_duration.with_label_values(&[route])).observe(r.duration.as_secs_f64());
            h.request(key, || {
                self.requests.with_label_values(&[route, credential, r.outcome.as_str(), status_class(r.status)])
            })
            .inc();
        });
    }

    /// Records the time spent deciding one request; `kind` is the kind of the credential
    /// that authenticated, `None` if none did.
    pub fn observe_auth(&self, kind: Option<CredentialKind>, elapsed: Duration) {
        self.auth_by_kind[auth_kind_index(kind)].observe(elapsed.as_secs_f64());
    }

    /// The token endpoint issued a token to `client` (the configured client id) at `now`:
    /// counts it and marks the client used. An id not configured as a client counts as `""`.
    pub fn token_issued(&self, snap: &Snapshot, client: &str, now: i64) {
        let labels = self.labels(snap);
        let known = labels
            .credentials
            .get_key_value(client)
            .filter(|(_, c)| c.credential.kind == CredentialKind::Client);
        self.tokens_issued
            .with_label_values(&[known.filter(|_| labels.per_credential).map_or(NONE, |(name, _)| name.as_ref())])
            .inc();
        if let Some(g) = known.and_then(|(_, c)| c.last_used.as_ref()) {
            g.set(now as f64);
        }
    }

    /// The token endpoint refused a request with this OAuth error code (the `reason` label:
    /// one of [`OAuthCode::ALL`](crate::token::endpoint::OAuthCode::ALL)).
    pub fn token_refused(&self, code: crate::token::endpoint::OAuthCode) {
        self.token_refused.with_label_values(&[code.as_str()]).inc();
    }

    /// The metrics in the Prometheus text format (0.0.4), credential states judged now.
    pub fn render(&self) -> String {
        self.render_at(unix_now())
    }

    /// [`Metrics::render`] with credential states judged at `now` (unix seconds):
    /// credentials expire between reloads, so the state counts are refreshed per scrape.
    pub fn render_at(&self, now: i64) -> String {
        self.count_credentials(now);
        let dropped = crate::telemetry::audit_lines_dropped();
        let seen = self.audit_dropped.get();
        if dropped > seen {
            self.audit_dropped.inc_by(dropped - seen);
        }
        match TextEncoder::new().encode_to_string(&self.registry.gather()) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode metrics");
                String::new()
            }
        }
    }

    /// Sets `portcullis_credentials{kind,state}` from the current label table at `now`.
    fn count_credentials(&self, now: i64) {
        let in_force = self.update.lock().unwrap_or_else(|p| p.into_inner());
        self.set_credential_counts(&in_force.labels, now);
    }

    /// Sets the state counts from `labels` (of the snapshot in force; the caller holds
    /// `self.update`).
    /// The per-scrape counts: credentials by state, the active ones expiring within 7
    /// and 30 days, and the soonest expiry, by kind.
    fn set_credential_counts(&self, labels: &Labels, now: i64) {
        let mut counts = [[0i64; CredentialState::ALL.len()]; CONFIGURED_KINDS.len()];
        let mut expiring = [[0i64; 2]; CONFIGURED_KINDS.len()];
        let mut soonest = [i64::MAX; CONFIGURED_KINDS.len()];
        for c in labels.credentials.values() {
            let kind = CONFIGURED_KINDS.iter().position(|k| *k == c.credential.kind);
            let st = CredentialState::of(&c.credential, now);
            let state = CredentialState::ALL.iter().position(|s| *s == st);
            if let (Some(k), Some(s)) = (kind, state) {
                counts[k][s] += 1;
                if st == CredentialState::Active {
                    let left = c.credential.expires_at - now;
                    expiring[k][0] += (left <= 7 * 86_400) as i64;
                    expiring[k][1] += (left <= 30 * 86_400) as i64;
                    soonest[k] = soonest[k].min(c.credential.expires_at);
                }
            }
        }
        for (k, kind) in CONFIGURED_KINDS.iter().enumerate() {
            for (s, state) in CredentialState::ALL.iter().enumerate() {
                self.credentials.with_label_values(&[kind.as_str(), state.as_str()]).set(counts[k][s]);
            }
            for (w, within) in ["7d", "30d"].iter().enumerate() {
                self.credentials_expiring.with_label_values(&[kind.as_str(), within]).set(expiring[k][w]);
            }
            if soonest[k] == i64::MAX {
                let _ = self.soonest_expiry.remove_label_values(&[kind.as_str()]);
            } else {
                self.soonest_expiry.with_label_values(&[kind.as_str()]).set(soonest[k] as f64);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    pub(crate) const NOW: i64 = 1_800_000_000;

    /// One credentials-file entry: `kind` `client` or `api_key`, expiring at `expires_at`.
    pub(crate) fn entry(name: &str, expires_at: i64, disabled: bool) -> String {
        let expires = chrono::DateTime::from_timestamp(expires_at, 0).unwrap().to_rfc3339();
        let hash = hex::encode(Sha256::digest(name.as_bytes()));
        format!(
            "  - {{ name: {name}, key_hash: \"sha256:{hash}\", permissions: [\"balances:read\"], \
             expires: \"{expires}\", disabled: {disabled} }}\n"
        )
    }

    /// A snapshot loaded through the real config loader (so these tests follow the
    /// model as it grows): `routes` each requiring `balances:read`, the given `clients`
    /// (id, expiry) and `api_keys` entries (see [`entry`]).
    pub(crate) fn load_snapshot(routes: &[&str], clients: &[(&str, i64)], api_keys: &[String]) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        let mut main = String::from("listen: \"127.0.0.1:8080\"\nupstream: \"127.0.0.1:3000\"\nroutes:\n");
        for r in routes {
            main.push_str(&format!("  - match: \"{r}\"\n    require: \"balances:read\"\n"));
        }
        if routes.is_empty() {
            main = main.replace("routes:\n", "routes: []\n");
        }
        let mut creds = String::from("clients:\n");
        for (id, expires_at) in clients {
            let expires = chrono::DateTime::from_timestamp(*expires_at, 0).unwrap().to_rfc3339();
            let hash = hex::encode(Sha256::digest(id.as_bytes()));
            creds.push_str(&format!(
                "  - {{ id: {id}, secret_hash: \"sha256:{hash}\", permissions: [\"balances:read\"], expires: \"{expires}\" }}\n"
            ));
        }
        if clients.is_empty() {
            creds = "clients: []\n".into();
        }
        creds.push_str(if api_keys.is_empty() {
            "api_keys: []\n"
        } else {
            "api_keys:\n"
        });
        for k in api_keys {
            creds.push_str(k);
        }
        std::fs::write(dir.path().join("portcullis.yaml"), main).unwrap();
        std::fs::write(dir.path().join("credentials.yaml"), creds).unwrap();
        crate::config::load(&dir.path().join("portcullis.yaml"), NOW).unwrap_or_else(|e| panic!("{e}"))
    }

    fn base() -> (Metrics, Snapshot) {
        let snap = load_snapshot(
            &["GET /v1/vaults/{vault_id}/balances"],
            &[("reporting", NOW + 86_400)],
            &[
                entry("acme-backend", NOW + 86_400, false),
                entry("old-key", NOW - 1, false),
                entry("off-key", NOW + 86_400, true),
            ],
        );
        // As at start: a snapshot in force, no reload yet.
        let m = Metrics::new();
        m.on_snapshot(&snap, NOW);
        (m, snap)
    }

    fn allowed<'a>(route: &'a str, credential: &'a str, kind: CredentialKind) -> RequestObservation<'a> {
        RequestObservation {
            route: Some(route),
            credential: Some(credential),
            kind: Some(kind),
            outcome: Outcome::Allowed,
            status: 200,
            reason: None,
            duration: Duration::from_micros(300),
            now: NOW + 5,
        }
    }

    /// The value of the one sample line that starts with `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn counts_an_allowed_request_by_route_credential_outcome_and_class() {
        let (m, snap) = base();
        m.observe_request(&snap, &allowed(
            "GET /v1/vaults/{vault_id}/balances",
            "acme-backend",
            CredentialKind::ApiKey,
        ));
        let text = m.render_at(NOW);
        assert_eq!(
            value(
                &text,
                r#"portcullis_requests_total{credential="acme-backend",outcome="allowed",route="GET /v1/vaults/{vault_id}/balances",status_class="2xx"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_last_used_timestamp_seconds{credential="acme-backend",kind="api_key"}"#
            ),
            Some((NOW + 5) as f64)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_request_duration_seconds_count{route="GET /v1/vaults/{vault_id}/balances"}"#
            ),
            Some(1.0)
        );
    }

    /// The children kept per thread go to the registry and the series they were made
    /// for: two registries on one snapshot, more label sets than the table has slots.
    #[test]
    fn cached_children_count_in_their_own_registry_and_series() {
        let (m1, snap) = base();
        let m2 = Metrics::new();
        m2.on_snapshot(&snap, NOW);
        let route = "GET /v1/vaults/{vault_id}/balances";
        let outcomes = [Outcome::Allowed, Outcome::Denied, Outcome::Error, Outcome::ShadowDenied, Outcome::ClientClosed];
        let statuses = [200, 404, 503, 0, 101, 302];
        for round in 0..3 {
            for (i, outcome) in outcomes.iter().enumerate() {
                for status in statuses {
                    let mut o = allowed(route, "acme-backend", CredentialKind::ApiKey);
                    o.outcome = *outcome;
                    o.status = status;
                    m1.observe_request(&snap, &o);
                    if round == 0 || i == 0 {
                        m2.observe_request(&snap, &o);
                    }
                }
            }
        }
        let (t1, t2) = (m1.render_at(NOW), m2.render_at(NOW));
        for outcome in outcomes {
            for status in statuses {
                let series = format!(
                    r#"portcullis_requests_total{{credential="acme-backend",outcome="{}",route="{route}",status_class="{}"}}"#,
                    outcome.as_str(),
                    status_class(status)
                );
                assert_eq!(value(&t1, &series), Some(3.0), "{series}\n{t1}");
                let want = if outcome == Outcome::Allowed { 3.0 } else { 1.0 };
                assert_eq!(value(&t2, &series), Some(want), "{series}\n{t2}");
            }
        }
        let count = format!(r#"portcullis_request_duration_seconds_count{{route="{route}"}}"#);
        assert_eq!(value(&t1, &count), Some(90.0));
        assert_eq!(value(&t2, &count), Some(30.0 + 12.0));
    }

    #[test]
    fn denies_caller_chosen_label_values() {
        let (m, snap) = base();
        // An unknown route and credential name, as a caller could send them.
        m.observe_request(&snap, &RequestObservation {
            outcome: Outcome::Denied,
            status: 403,
            reason: Some(Reason::RouteNotAllowed),
            ..allowed("GET /evil/../x", "attacker-chosen", CredentialKind::ApiKey)
        });
        // An external token whose subject equals a configured key's name.
        m.observe_request(&snap, &allowed(
            "GET /v1/vaults/{vault_id}/balances",
            "acme-backend",
            CredentialKind::External,
        ));
        m.token_issued(&snap, "not-a-client", NOW);
        m.token_issued(&snap, "acme-backend", NOW); // an API key, not a client
        let text = m.render_at(NOW);
        for bad in ["/evil", "attacker-chosen", "not-a-client"] {
            assert!(!text.contains(bad), "{bad} leaked into\n{text}");
        }
        assert_eq!(
            value(
                &text,
                r#"portcullis_requests_total{credential="",outcome="denied",route="",status_class="4xx"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_requests_total{credential="",outcome="allowed",route="GET /v1/vaults/{vault_id}/balances",status_class="2xx"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, r#"portcullis_tokens_issued_total{client=""}"#), Some(2.0));
        // The external token did not mark the API key used.
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_last_used_timestamp_seconds{credential="acme-backend",kind="api_key"}"#
            ),
            Some(0.0)
        );
    }

    #[test]
    fn counts_denials_by_reason_and_upstream_errors_by_kind() {
        let (m, snap) = base();
        let denied = RequestObservation {
            route: None,
            credential: None,
            kind: None,
            outcome: Outcome::Denied,
            status: 401,
            reason: Some(Reason::InvalidApiKey),
            duration: Duration::from_micros(20),
            now: NOW,
        };
        m.observe_request(&snap, &denied);
        m.observe_request(&snap, &denied);
        m.observe_request(&snap, &RequestObservation {
            outcome: Outcome::ShadowDenied,
            status: 200,
            reason: Some(Reason::IpNotAllowed),
            ..denied
        });
        m.observe_request(&snap, &RequestObservation {
            outcome: Outcome::Error,
            status: 504,
            reason: Some(Reason::UpstreamTimeout),
            ..denied
        });
        let text = m.render_at(NOW);
        assert_eq!(
            value(&text, r#"portcullis_denials_total{reason="invalid_api_key"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"portcullis_denials_total{reason="ip_not_allowed"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(&text, r#"portcullis_shadow_denials_total{reason="ip_not_allowed"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"portcullis_upstream_errors_total{kind="timeout"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"portcullis_upstream_errors_total{kind="unavailable"}"#),
            Some(0.0)
        );
        // Upstream failures are not denials.
        assert_eq!(
            value(&text, r#"portcullis_denials_total{reason="upstream_timeout"}"#),
            None
        );
    }

    #[test]
    fn denied_requests_do_not_mark_a_credential_used() {
        let (m, snap) = base();
        m.observe_request(&snap, &RequestObservation {
            outcome: Outcome::Denied,
            status: 403,
            reason: Some(Reason::IpNotAllowed),
            ..allowed(
                "GET /v1/vaults/{vault_id}/balances",
                "acme-backend",
                CredentialKind::ApiKey,
            )
        });
        let text = m.render_at(NOW);
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_last_used_timestamp_seconds{credential="acme-backend",kind="api_key"}"#
            ),
            Some(0.0)
        );
        assert!(text.contains(
            r#"portcullis_requests_total{credential="acme-backend",outcome="denied",route="GET /v1/vaults/{vault_id}/balances",status_class="4xx"} 1"#
        ));
    }

    #[test]
    fn tracks_exactly_the_current_credentials_across_snapshots() {
        let (m, snap) = base();
        m.observe_request(&snap, &allowed(
            "GET /v1/vaults/{vault_id}/balances",
            "acme-backend",
            CredentialKind::ApiKey,
        ));
        m.token_issued(&snap, "reporting", NOW + 7);
        // Reload: "reporting" deleted, "new-key" added, "acme-backend" kept.
        let next = load_snapshot(
            &[],
            &[],
            &[
                entry("acme-backend", NOW + 172_800, false),
                entry("new-key", NOW + 86_400, false),
            ],
        );
        let (old_hash, new_hash) = (m.update.lock().unwrap().hash.clone(), next.content_hash.clone());
        assert_ne!(old_hash, new_hash);
        m.on_snapshot(&next, NOW + 10);
        m.on_reload(true, NOW + 10);
        let text = m.render_at(NOW + 10);
        // Per-credential gauges follow the config; counters (tokens issued) keep their history.
        for gone in ["reporting", "old-key", "off-key"] {
            assert!(
                !text.contains(&format!("credential=\"{gone}\"")),
                "{gone} still present:\n{text}"
            );
        }
        assert!(text.contains(r#"portcullis_tokens_issued_total{client="reporting"} 1"#));
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_last_used_timestamp_seconds{credential="acme-backend",kind="api_key"}"#
            ),
            Some((NOW + 5) as f64),
            "a kept credential keeps its last use"
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_expiry_timestamp_seconds{credential="acme-backend",kind="api_key"}"#
            ),
            Some((NOW + 172_800) as f64)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_expiry_timestamp_seconds{credential="new-key",kind="api_key"}"#
            ),
            Some((NOW + 86_400) as f64)
        );
        assert_eq!(
            value(&text, &format!(r#"portcullis_config_info{{hash="{new_hash}"}}"#)),
            Some(1.0)
        );
        assert!(!text.contains(&old_hash), "old hash still present");
        assert_eq!(
            value(&text, r#"portcullis_config_reloads_total{result="success"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "portcullis_config_last_reload_success_timestamp_seconds"),
            Some((NOW + 10) as f64)
        );
        // The removed route no longer counts as a label value (a request of the new
        // snapshot records with the new snapshot's labels).
        m.observe_request(&next, &allowed(
            "GET /v1/vaults/{vault_id}/balances",
            "new-key",
            CredentialKind::ApiKey,
        ));
        let text = m.render_at(NOW + 10);
        assert!(text.contains(
            r#"portcullis_requests_total{credential="new-key",outcome="allowed",route="",status_class="2xx"} 1"#
        ));
    }

    #[test]
    fn counts_expiring_credentials_and_the_soonest_expiry_by_kind() {
        let (m, _) = base();
        let text = m.render_at(NOW);
        // acme-backend (active) expires in a day; old-key has expired; off-key is disabled.
        assert_eq!(value(&text, r#"portcullis_credentials_expiring{kind="api_key",within="7d"}"#), Some(1.0), "{text}");
        assert_eq!(value(&text, r#"portcullis_credentials_expiring{kind="api_key",within="30d"}"#), Some(1.0));
        assert_eq!(value(&text, r#"portcullis_credentials_soonest_expiry_timestamp_seconds{kind="api_key"}"#), Some((NOW + 86_400) as f64));
        assert_eq!(value(&text, r#"portcullis_credentials_expiring{kind="client",within="7d"}"#), Some(1.0));
    }

    #[test]
    fn allows_per_credential_series_to_be_turned_off_and_keeps_the_counts() {
        let mut snap = load_snapshot(&["GET /v1/vaults/{vault_id}/balances"], &[("reporting", NOW + 86_400)], &[entry("acme-backend", NOW + 86_400, false)]);
        snap.settings.per_credential_metrics = Some(false);
        let m = Metrics::new();
        m.on_snapshot(&snap, NOW);
        m.observe_request(&snap, &allowed("GET /v1/vaults/{vault_id}/balances", "acme-backend", CredentialKind::ApiKey));
        m.token_issued(&snap, "reporting", NOW);
        let text = m.render_at(NOW);
        assert!(!text.contains("acme-backend") && !text.contains("reporting"), "no series names a credential: {text}");
        assert!(!text.contains("portcullis_credential_expiry_timestamp_seconds{"), "{text}");
        assert_eq!(
            value(&text, r#"portcullis_requests_total{credential="",outcome="allowed",route="GET /v1/vaults/{vault_id}/balances",status_class="2xx"}"#),
            Some(1.0)
        );
        assert_eq!(value(&text, r#"portcullis_tokens_issued_total{client=""}"#), Some(1.0));
        assert_eq!(value(&text, r#"portcullis_credentials{kind="api_key",state="active"}"#), Some(1.0));
        assert_eq!(value(&text, r#"portcullis_credentials_expiring{kind="api_key",within="30d"}"#), Some(1.0));
    }

    #[test]
    fn counts_credentials_by_kind_and_state_as_time_passes() {
        let (m, _) = base();
        let text = m.render_at(NOW);
        let count = |text: &str, kind: &str, state: &str| {
            value(
                text,
                &format!(r#"portcullis_credentials{{kind="{kind}",state="{state}"}}"#),
            )
        };
        assert_eq!(count(&text, "api_key", "active"), Some(1.0));
        assert_eq!(count(&text, "api_key", "expired"), Some(1.0));
        assert_eq!(count(&text, "api_key", "disabled"), Some(1.0));
        assert_eq!(count(&text, "client", "active"), Some(1.0));
        assert_eq!(count(&text, "client", "disabled"), Some(0.0));
        // A day later, without a reload, the active ones have expired.
        let later = m.render_at(NOW + 86_400);
        assert_eq!(count(&later, "api_key", "active"), Some(0.0));
        // The disabled key has expired too: expired wins, so each is counted once.
        assert_eq!(count(&later, "api_key", "expired"), Some(3.0));
        assert_eq!(count(&later, "api_key", "disabled"), Some(0.0));
        assert_eq!(count(&later, "client", "expired"), Some(1.0));
    }

    #[test]
    fn records_reload_failures_without_touching_the_last_success() {
        let (m, snap) = base();
        let start = m.render_at(NOW);
        assert_eq!(
            value(&start, "portcullis_config_last_reload_success_timestamp_seconds"),
            Some(NOW as f64)
        );
        assert_eq!(value(&start, "portcullis_config_last_reload_successful"), Some(1.0));
        assert_eq!(
            value(&start, r#"portcullis_config_reloads_total{result="success"}"#),
            Some(0.0)
        );
        m.on_reload(false, NOW + 60);
        let text = m.render_at(NOW + 60);
        assert_eq!(
            value(&text, r#"portcullis_config_reloads_total{result="failure"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"portcullis_config_reloads_total{result="success"}"#),
            Some(0.0)
        );
        assert_eq!(value(&text, "portcullis_config_last_reload_successful"), Some(0.0));
        assert_eq!(
            value(&text, "portcullis_config_last_reload_success_timestamp_seconds"),
            Some(NOW as f64)
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"portcullis_config_info{{hash="{}"}}"#, snap.content_hash)
            ),
            Some(1.0)
        );
    }

    #[test]
    fn counts_tokens_and_refusals() {
        let (m, snap) = base();
        let before = m.render_at(NOW);
        assert_eq!(
            value(&before, r#"portcullis_tokens_issued_total{client="reporting"}"#),
            Some(0.0)
        );
        m.token_issued(&snap, "reporting", NOW + 3);
        m.token_refused(crate::token::endpoint::OAuthCode::InvalidClient);
        m.token_refused(crate::token::endpoint::OAuthCode::InvalidClient);
        let text = m.render_at(NOW);
        assert_eq!(
            value(&text, r#"portcullis_tokens_issued_total{client="reporting"}"#),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_token_requests_refused_total{reason="invalid_client"}"#
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_token_requests_refused_total{reason="invalid_scope"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_credential_last_used_timestamp_seconds{credential="reporting",kind="client"}"#
            ),
            Some((NOW + 3) as f64)
        );
    }

    #[test]
    fn observes_auth_latency_in_sub_millisecond_buckets() {
        let (m, _) = base();
        m.observe_auth(Some(CredentialKind::ApiKey), Duration::from_micros(15));
        m.observe_auth(None, Duration::from_millis(40));
        let text = m.render_at(NOW);
        assert_eq!(
            value(
                &text,
                r#"portcullis_auth_duration_seconds_bucket{kind="api_key",le="0.000025"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_auth_duration_seconds_bucket{kind="api_key",le="0.00001"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                r#"portcullis_auth_duration_seconds_bucket{kind="none",le="0.05"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&text, r#"portcullis_auth_duration_seconds_count{kind="client"}"#),
            Some(0.0)
        );
    }

    #[test]
    fn has_no_config_until_a_snapshot() {
        let m = Metrics::new();
        assert!(!m.has_config());
        assert!(m.render_at(NOW).contains("portcullis_denials_total"));
        let (m, _) = base();
        assert!(m.has_config());
    }

    #[test]
    fn outcome_names_are_distinct_and_status_classes_group() {
        let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
        assert_eq!(status_class(0), "none");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
    }
}
