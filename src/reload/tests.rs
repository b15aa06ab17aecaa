//! Reload: diff, apply, fingerprint and watch set, against real files.
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::EventKind;
use sha2::{Digest, Sha256};

use super::*;
use crate::config::Snapshot;

const MAIN: &str = "listen: \"127.0.0.1:18080\"\nupstream: \"127.0.0.1:13000\"\nadmin_listen: \"127.0.0.1:19901\"\nenvironment: sandbox\ncredentials_file: credentials.yaml\nroutes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n";

fn key_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn key_entry(name: &str, key: &str, perms: &str, expires: &str) -> String {
    format!(
        "  - name: {name}\n    key_hash: \"{}\"\n    permissions: [{perms}]\n    expires: {expires}\n",
        key_hash(key)
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    shared: Shared,
}

impl Fixture {
    fn new(main: &str, creds: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("portcullis.yaml"), main).unwrap();
        std::fs::write(dir.path().join("credentials.yaml"), creds).unwrap();
        let snap = config::load(&dir.path().join("portcullis.yaml"), 0).unwrap();
        Fixture {
            shared: Arc::new(ArcSwap::from_pointee(snap)),
            dir,
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("portcullis.yaml")
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }
    fn reload(&self) -> ReloadResult {
        reload_now(&self.path(), &self.shared, Trigger::Manual, 0)
    }
    fn load(&self) -> Snapshot {
        config::load(&self.path(), 0).unwrap()
    }
}

fn creds(entries: &[String]) -> String {
    format!("api_keys:\n{}", entries.concat())
}

#[test]
fn diff_names_added_removed_and_changed_credentials() {
    let a = key_entry("a", "key-a", "\"balances:read\"", "2099-01-01");
    let b = key_entry("b", "key-b", "\"balances:read\"", "2099-01-01");
    let f = Fixture::new(MAIN, &creds(&[a.clone(), b]));
    let old = f.load();
    let a2 = key_entry("a", "key-a", "\"balances:read\", \"vault:read\"", "2098-01-01");
    let c = key_entry("c", "key-c", "\"balances:read\"", "2099-01-01");
    f.write("credentials.yaml", &creds(&[a2, c]));
    let d = diff(&old, &f.load());
    assert_eq!(d.credentials_added, vec!["c"]);
    assert_eq!(d.credentials_removed, vec!["b"]);
    assert_eq!(
        d.credentials_changed,
        vec![CredentialChange {
            name: "a".into(),
            fields: vec!["permissions", "expires"]
        }]
    );
    assert!(d.routes_added.is_empty() && d.routes_removed.is_empty() && d.settings.is_empty());
    assert_eq!(
        d.to_string(),
        "credentials added: c; credentials removed: b; credentials changed: a (permissions, expires)"
    );
}

#[test]
fn diff_names_a_rotated_key_without_its_hash() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "old-key", "\"balances:read\"", "2099-01-01")]),
    );
    let old = f.load();
    f.write(
        "credentials.yaml",
        &creds(&[key_entry("a", "new-key", "\"balances:read\"", "2099-01-01")]),
    );
    let d = diff(&old, &f.load());
    assert_eq!(
        d.credentials_changed,
        vec![CredentialChange {
            name: "a".into(),
            fields: vec!["key_hash"]
        }]
    );
    let text = format!("{d} {d:?}");
    for secret in [
        "old-key",
        "new-key",
        &key_hash("old-key")[7..],
        &key_hash("new-key")[7..],
    ] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[test]
fn diff_names_added_and_removed_routes_and_settings() {
    let c = creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]);
    let f = Fixture::new(MAIN, &c);
    let old = f.load();
    let main = MAIN.replace("13000", "13001").replace(
        "GET /v1/vaults/{vault_id}/balances",
        "GET /v1/vaults/{vault_id}/keys",
    ) + "  - match: \"GET /v1/status\"\n    public: true\n";
    f.write("portcullis.yaml", &main);
    let d = diff(&old, &f.load());
    assert_eq!(
        d.routes_added,
        vec!["GET /v1/vaults/{vault_id}/keys", "GET /v1/status"]
    );
    assert_eq!(d.routes_removed, vec!["GET /v1/vaults/{vault_id}/balances"]);
    assert_eq!(d.settings, vec!["upstream"]);
    assert!(d.credentials_added.is_empty() && d.credentials_changed.is_empty());
}

#[test]
fn diff_is_empty_when_only_comments_and_order_change() {
    let a = key_entry("a", "key-a", "\"balances:read\", \"vault:read\"", "2099-01-01");
    let b = key_entry("b", "key-b", "\"balances:read\"", "2099-01-01");
    let f = Fixture::new(MAIN, &creds(&[a, b.clone()]));
    let old = f.load();
    let a = key_entry("a", "key-a", "\"vault:read\", \"balances:read\"", "2099-01-01");
    f.write("credentials.yaml", &format!("# a comment\n{}", creds(&[b, a])));
    let d = diff(&old, &f.load());
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        d.to_string(),
        "no named change (comments, formatting or order only)"
    );
}

#[test]
fn applies_a_valid_change_with_one_store() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let before = f.shared.load_full();
    f.write(
        "credentials.yaml",
        &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
    );
    match f.reload() {
        ReloadResult::Applied { diff, needs_restart } => {
            assert_eq!(diff.credentials_added, vec!["b"]);
            assert_eq!(diff.credentials_removed, vec!["a"]);
            assert!(needs_restart.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let after = f.shared.load_full();
    assert_eq!(after.credentials.all[0].id.as_ref(), "b");
    // An in-flight request's snapshot is untouched.
    assert_eq!(before.credentials.all[0].id.as_ref(), "a");
}

#[test]
fn reports_unchanged_files_without_a_store() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let before = f.shared.load_full();
    assert_eq!(f.reload(), ReloadResult::Unchanged);
    assert!(Arc::ptr_eq(&before, &f.shared.load_full()));
}

#[test]
fn keeps_the_last_good_snapshot_when_a_file_is_bad() {
    let good = creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]);
    let f = Fixture::new(MAIN, &good);
    let before = f.shared.load_full();
    let cases = [
        ("syntax error", "api_keys:\n  - name: [oops\n".to_string()),
        (
            "unknown field",
            good.replace("    expires:", "    colour: red\n    expires:"),
        ),
        ("half written", good[..good.len() / 2].to_string()),
        ("empty", String::new()),
    ];
    for (what, text) in cases {
        f.write("credentials.yaml", &text);
        match f.reload() {
            ReloadResult::Failed(errors) => {
                assert!(
                    errors.to_string().contains("credentials.yaml"),
                    "{what}: {errors}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(Arc::ptr_eq(&before, &f.shared.load_full()), "{what}");
    }
    std::fs::remove_file(f.dir.path().join("credentials.yaml")).unwrap();
    assert!(matches!(f.reload(), ReloadResult::Failed(_)));
    assert!(Arc::ptr_eq(&before, &f.shared.load_full()));
    // Fixing the file recovers.
    f.write(
        "credentials.yaml",
        &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
    );
    assert!(matches!(f.reload(), ReloadResult::Applied { .. }));
    assert_eq!(f.shared.load().credentials.all[0].id.as_ref(), "b");
}

#[test]
fn keeps_listen_addresses_and_applies_the_rest() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let main = MAIN
        .replace("18080", "18081")
        .replace("19901", "19902")
        .replace("13000", "13001")
        + "shutdown_grace: 3\n";
    f.write("portcullis.yaml", &main);
    match f.reload() {
        ReloadResult::Applied { diff, needs_restart } => {
            assert_eq!(needs_restart, vec!["listen", "admin_listen", "shutdown_grace"]);
            assert_eq!(diff.settings, vec!["upstream"]);
        }
        other => panic!("{other:?}"),
    }
    let s = &f.shared.load().settings;
    assert_eq!(s.listen, "127.0.0.1:18080");
    assert_eq!(s.admin_listen, "127.0.0.1:19901");
    assert_eq!(s.upstream_text, "127.0.0.1:13001");
    // Reported once: the same files again are unchanged.
    assert_eq!(f.reload(), ReloadResult::Unchanged);
}

#[test]
fn reloader_skips_unchanged_files_and_reports_a_bad_file_once() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let r = Reloader::new(f.path(), f.shared.clone(), move |_: &ReloadResult| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(
        r.check(Trigger::Poll),
        Some(ReloadResult::Unchanged),
        "the first check reads"
    );
    assert_eq!(r.check(Trigger::Poll), None);
    f.write("credentials.yaml", "api_keys: [");
    assert!(matches!(r.check(Trigger::Watch), Some(ReloadResult::Failed(_))));
    assert_eq!(r.check(Trigger::Poll), None, "a bad file is reported once");
    assert!(
        matches!(r.reload(Trigger::Signal), ReloadResult::Failed(_)),
        "SIGHUP always reads"
    );
    f.write(
        "credentials.yaml",
        &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
    );
    assert!(matches!(
        r.check(Trigger::Watch),
        Some(ReloadResult::Applied { .. })
    ));
    assert_eq!(seen.load(Ordering::SeqCst), 4);
}

/// The first check after start compares the files with the snapshot the server started
/// on instead of loading them again; a change made between the start and that check is
/// still loaded.
#[test]
fn the_first_check_loads_only_what_changed_since_the_start() {
    let f = Fixture::new(MAIN, &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]));
    let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
    let before = f.shared.load_full();
    assert_eq!(r.check(Trigger::Poll), Some(ReloadResult::Unchanged));
    assert!(Arc::ptr_eq(&before, &f.shared.load_full()), "the snapshot in force stays");

    let f = Fixture::new(MAIN, &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]));
    f.write("credentials.yaml", &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]));
    let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
    assert!(matches!(r.check(Trigger::Poll), Some(ReloadResult::Applied { .. })), "changed before the first check");
    assert!(f.shared.load().credentials.find("b").is_some());
}

#[test]
fn reloader_watches_a_new_credentials_file_named_by_a_failure() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
    f.write(
        "portcullis.yaml",
        &MAIN.replace("credentials.yaml", "other/creds.yaml"),
    );
    assert!(matches!(r.check(Trigger::Watch), Some(ReloadResult::Failed(_))));
    let dirs = r.watch_set().dirs;
    assert!(dirs.contains(&f.dir.path().join("other")), "{dirs:?}");
    // Creating the missing file changes the fingerprint.
    std::fs::create_dir(f.dir.path().join("other")).unwrap();
    f.write(
        "other/creds.yaml",
        &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]),
    );
    assert!(matches!(
        r.check(Trigger::Watch),
        Some(ReloadResult::Applied { .. })
    ));
}

#[test]
fn watches_the_directory_of_a_symlink_target() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real.yaml");
    std::fs::rename(f.dir.path().join("credentials.yaml"), &target).unwrap();
    std::os::unix::fs::symlink(&target, f.dir.path().join("credentials.yaml")).unwrap();
    let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
    let set = r.watch_set();
    assert!(set.dirs.contains(&f.dir.path().to_path_buf()), "{set:?}");
    assert!(
        set.dirs
            .contains(&std::fs::canonicalize(elsewhere.path()).unwrap()),
        "{set:?}"
    );
    for name in ["credentials.yaml", "portcullis.yaml", "real.yaml"] {
        assert!(set.names.contains(OsStr::new(name)), "{set:?}");
    }
}

#[test]
fn classifies_events_by_kind_and_name() {
    use notify::event::{CreateKind, DataChange, Flag, ModifyKind, RemoveKind, RenameMode};
    let watch = WatchSet {
        dirs: vec![PathBuf::from("/etc/p")],
        names: ["portcullis.yaml", "credentials.yaml"]
            .into_iter()
            .map(OsString::from)
            .collect(),
    };
    let ev = |kind, path: &str| Ok(notify::Event::new(kind).add_path(PathBuf::from(path)));
    let data = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    let rel = |e| relevance(&e, &watch);
    // Reads, ours included, are no change.
    assert_eq!(
        rel(ev(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/etc/p/credentials.yaml"
        )),
        Relevance::None
    );
    assert_eq!(
        rel(ev(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/etc/p/credentials.yaml"
        )),
        Relevance::None
    );
    // Writes, renames and removals of our names, and Kubernetes' `..` entries.
    assert_eq!(
        rel(ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/etc/p/credentials.yaml"
        )),
        Relevance::Config
    );
    assert_eq!(rel(ev(data, "/etc/p/portcullis.yaml")), Relevance::Config);
    assert_eq!(
        rel(ev(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/etc/p/credentials.yaml"
        )),
        Relevance::Config
    );
    assert_eq!(
        rel(ev(EventKind::Create(CreateKind::Other), "/etc/p/..data_tmp")),
        Relevance::Config
    );
    assert_eq!(
        rel(ev(EventKind::Remove(RemoveKind::Folder), "/etc/p")),
        Relevance::Config
    );
    // Anything else nearby.
    assert_eq!(rel(ev(data, "/etc/p/stdout.log")), Relevance::Nearby);
    // The sidecar's own state files are not config.
    for own in ["/etc/p/credentials.yaml.last-used.json", "/etc/p/.credentials.yaml.last-used.json.42.tmp", "/etc/p/credentials.yaml.requests.json", "/etc/p/credentials.yaml.requests.0a1b2c3d.tmp"] {
        assert_eq!(rel(ev(EventKind::Create(CreateKind::File), own)), Relevance::None, "{own}");
    }
    assert_eq!(
        rel(ev(
            EventKind::Create(CreateKind::File),
            "/etc/p/.credentials.yaml.swp"
        )),
        Relevance::Nearby
    );
    // Lost events and watcher errors.
    assert_eq!(
        rel(Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan))),
        Relevance::Config
    );
    assert_eq!(
        rel(Err(notify::Error::generic("queue overflow"))),
        Relevance::Config
    );
}

#[test]
fn names_the_first_hop_of_a_kubernetes_style_symlink() {
    let f = Fixture::new(
        MAIN,
        &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]),
    );
    let d = f.dir.path();
    std::fs::create_dir(d.join("..2026_01_01")).unwrap();
    std::fs::rename(
        d.join("credentials.yaml"),
        d.join("..2026_01_01/credentials.yaml"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_01_01", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/credentials.yaml", d.join("credentials.yaml")).unwrap();
    let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
    let set = r.watch_set();
    assert!(set.names.contains(OsStr::new("..data")), "{set:?}");
    assert!(
        set.dirs
            .contains(&std::fs::canonicalize(d.join("..2026_01_01")).unwrap()),
        "{set:?}"
    );
}

/// Whether `freed` is notified within `within`.
fn told(freed: &tokio::sync::Notify, within: Duration) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async { tokio::time::timeout(within, freed.notified()).await.is_ok() })
}

/// A reload that replaces the snapshot has the old one freed, and the reload service told.
#[test]
fn reloader_tells_when_a_replaced_snapshot_is_freed() {
    let f = Fixture::new(MAIN, &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]));
    let r = Reloader::new(f.path(), f.shared.clone(), |_: &ReloadResult| {});
    let old = Arc::downgrade(&f.shared.load_full());
    f.write("credentials.yaml", &creds(&[key_entry("b", "key-b", "\"balances:read\"", "2099-01-01")]));
    assert!(matches!(r.reload(Trigger::Manual), ReloadResult::Applied { .. }));
    assert!(told(r.freed(), Duration::from_secs(10)), "not told of the replaced snapshot's release");
    assert!(old.upgrade().is_none(), "the replaced snapshot is freed");
}

/// The release waits for the requests still holding the snapshot, frees it after the last
/// lets go and only then tells; past its wait it leaves the snapshot to its last holder and
/// tells nobody.
#[test]
fn a_replaced_snapshot_is_freed_after_its_last_request_and_only_then_told() {
    let f = Fixture::new(MAIN, &creds(&[key_entry("a", "key-a", "\"balances:read\"", "2099-01-01")]));
    let freed = Arc::new(tokio::sync::Notify::new());
    let held = Arc::new(f.load());
    let weak = Arc::downgrade(&held);
    reloader::release_when_unused(held.clone(), Duration::from_secs(60), freed.clone());
    assert!(!told(&freed, Duration::from_millis(300)), "told while a request holds the snapshot");
    assert!(weak.upgrade().is_some());
    drop(held);
    assert!(told(&freed, Duration::from_secs(10)), "not told once the last request let go");
    assert!(weak.upgrade().is_none(), "the snapshot is freed");

    // Past the wait, still held: not freed there, nobody told.
    let freed = Arc::new(tokio::sync::Notify::new());
    let held = Arc::new(f.load());
    reloader::release_when_unused(held.clone(), Duration::from_millis(50), freed.clone());
    assert!(!told(&freed, Duration::from_millis(500)), "told though the snapshot is still held");
    assert_eq!(Arc::strong_count(&held), 1, "the release let go of its reference");
}
