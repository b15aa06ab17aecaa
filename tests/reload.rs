//! Hot reload (SPEC §7), end to end: the real binary, a real upstream on loopback, and
//! config files changed every way an operator, an editor or Kubernetes changes them.
//! "In force" is measured by polling the proxy with a new API key until it is
//! accepted, never by reading the log; the log is read only to know that a bad file
//! was looked at (so that "the old config still serves" is not checked too early).
//!
//! The tests run one at a time (`SERIAL`): each measures a 1-second deadline, and a
//! neighbour's load test on a 2-core machine would make that measure the scheduler.
mod common;

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{
    free_port, main_head, new_key, read_response, request, sha256_hash, try_send_raw, write_config, Proxy,
    Upstream,
};

/// SPEC §7: a change is in force within 1 second of the write.
const IN_FORCE: Duration = Duration::from_secs(1);
/// How long a test waits for the sidecar to have looked at (and refused) a bad file.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The log line of a failed reload and of a successful one (src/reload.rs).
const FAILED: &str = "config reload failed";
const RELOADED: &str = "\"config reloaded\"";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const ROUTES: &str =
    "routes:\n  - match: \"GET /v1/vaults/{vault_id}/balances\"\n    require: \"balances:read\"\n";

/// A credentials file holding an API key (named `name`) for each of `keys`.
fn creds(keys: &[(&str, &str)]) -> String {
    let mut s = String::from("api_keys:\n");
    for (name, key) in keys {
        s.push_str(&format!(
            "  - name: {name}\n    key_hash: \"{}\"\n    permissions: [\"balances:read\"]\n    expires: 2099-01-01\n",
            sha256_hash(key)
        ));
    }
    s
}

/// The status of one authorized-looking request with `key`; 0 if the request failed.
fn status(p: &Proxy, key: &str) -> u16 {
    status_at(p.addr, key)
}

fn status_at(addr: SocketAddr, key: &str) -> u16 {
    try_send_raw(
        None,
        addr,
        &request("GET", "/v1/vaults/v-1/balances", &[("x-api-key", key)]),
    )
    .map_or(0, |r| r.status)
}

/// Starts the sidecar on the config in `dir` and waits until its reload service
/// watches (so SIGHUP is handled and no event is lost).
fn spawn(dir: tempfile::TempDir, addr: SocketAddr, admin: SocketAddr) -> Proxy {
    let p = Proxy::spawn(dir, addr, admin);
    wait_log(&p, "watching the config for changes", 1, Duration::from_secs(10));
    p
}

/// A sidecar with `ROUTES` and one key, `old`, and its upstream.
fn start(old: &str) -> (Proxy, Upstream) {
    let upstream = Upstream::start();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = write_config(
        &format!("{}{ROUTES}", main_head(addr, admin, upstream.addr)),
        &creds(&[("old", old)]),
    );
    let p = spawn(dir, addr, admin);
    assert_eq!(status(&p, old), 200, "the first config does not serve");
    (p, upstream)
}

fn creds_path(p: &Proxy) -> PathBuf {
    p.dir.path().join("credentials.yaml")
}

/// Waits until the log holds `needle` at least `count` times.
fn wait_log(p: &Proxy, needle: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while p.stdout().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "the log did not show {needle:?} {count} time(s) within {within:?}\n--- stdout ---\n{}",
            p.stdout()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls until `key` is accepted; asserts that happened within `IN_FORCE` of `written`.
fn assert_in_force(p: &Proxy, key: &str, written: Instant, what: &str) {
    loop {
        if status(p, key) == 200 {
            let took = written.elapsed();
            assert!(took <= IN_FORCE, "{what}: in force after {took:?}");
            eprintln!("{what}: in force {took:?} after the write");
            return;
        }
        assert!(
            written.elapsed() <= IN_FORCE,
            "{what}: the new key was not accepted within {IN_FORCE:?}\n--- stdout ---\n{}",
            p.stdout()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The old config still serves and nothing of the bad one leaked in.
fn assert_still_serving(p: &Proxy, old: &str, not_yet: &str, what: &str) {
    assert_eq!(
        status(p, old),
        200,
        "{what}: the last good config stopped serving"
    );
    assert_eq!(
        status(p, not_yet),
        401,
        "{what}: a key from a rejected file was accepted"
    );
}

/// Replaces `path` in place: same inode, truncated, then written.
fn write_in_place(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open in place");
    f.write_all(text.as_bytes()).expect("write in place");
}

/// Replaces `path` as editors save: write a temporary file beside it, rename it over.
fn write_and_rename(path: &Path, text: &str) {
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, text).expect("write temp");
    fs::rename(&tmp, path).expect("rename over");
}

#[test]
fn edit_in_place_is_in_force_within_a_second() {
    let _serial = serial();
    let (old, new) = (new_key(), new_key());
    let (p, _up) = start(&old);
    let t = Instant::now();
    write_in_place(&creds_path(&p), &creds(&[("new", &new)]));
    assert_in_force(&p, &new, t, "edit in place");
    assert_eq!(status(&p, &old), 401, "a removed key still works");
}

#[test]
fn write_temp_and_rename_is_in_force_within_a_second() {
    let _serial = serial();
    let (old, new) = (new_key(), new_key());
    let (p, _up) = start(&old);
    for round in 0..3 {
        let key = new_key();
        let t = Instant::now();
        write_and_rename(
            &creds_path(&p),
            &creds(&[("old", &old), ("new", &new), ("round", &key)]),
        );
        assert_in_force(&p, &key, t, &format!("rename, round {round}"));
    }
    // The main config too: a route added by rename is in force.
    let t = Instant::now();
    let main = fs::read_to_string(p.config_path()).expect("read main")
        + "  - match: \"GET /v1/vaults/{vault_id}/keys\"\n    require: \"balances:read\"\n";
    write_and_rename(&p.config_path(), &main);
    loop {
        let r = p.send(&request("GET", "/v1/vaults/v-1/keys", &[("x-api-key", &old)]));
        if r.status == 200 {
            break;
        }
        assert!(
            t.elapsed() <= IN_FORCE,
            "a route added to the main config was not in force within 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A Kubernetes ConfigMap/Secret volume: `name -> ..data/name`, `..data -> ..<timestamp>`,
/// updated by writing a new timestamped directory and renaming a new `..data` symlink
/// over the old one, then deleting the old directory (as the kubelet's AtomicWriter does).
struct ConfigMapVolume {
    dir: PathBuf,
    version: usize,
}

impl ConfigMapVolume {
    fn create(dir: &Path, files: &[(&str, &str)]) -> ConfigMapVolume {
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        v.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("file symlink");
        }
        v
    }

    fn publish(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let ts = format!("..2026_11_23_12_00_00.{:04}", self.version);
        let ts_dir = self.dir.join(&ts);
        fs::create_dir(&ts_dir).expect("timestamped dir");
        for (name, text) in files {
            fs::write(ts_dir.join(name), text).expect("write configmap file");
        }
        let old = fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).expect("..data_tmp");
        fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        if let Some(old) = old {
            fs::remove_dir_all(self.dir.join(old)).expect("remove old timestamped dir");
        }
    }
}

#[test]
fn configmap_symlink_swap_is_in_force_within_a_second() {
    let _serial = serial();
    let upstream = Upstream::start();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = format!("{}{ROUTES}", main_head(addr, admin, upstream.addr));
    let old = new_key();
    let dir = tempfile::Builder::new()
        .prefix("portcullis-configmap")
        .tempdir()
        .expect("temp dir");
    let mut volume = ConfigMapVolume::create(
        dir.path(),
        &[
            ("portcullis.yaml", &main),
            ("credentials.yaml", &creds(&[("old", &old)])),
        ],
    );
    let p = spawn(dir, addr, admin);
    assert_eq!(status(&p, &old), 200);
    for round in 0..3 {
        let key = new_key();
        let t = Instant::now();
        volume.publish(&[
            ("portcullis.yaml", &main),
            ("credentials.yaml", &creds(&[("k", &key)])),
        ]);
        assert_in_force(&p, &key, t, &format!("ConfigMap swap, round {round}"));
        assert_eq!(status(&p, &old), 401, "a key removed by the swap still works");
    }
}

#[test]
fn delete_and_recreate_keeps_serving_then_recovers() {
    let _serial = serial();
    let (old, new) = (new_key(), new_key());
    let (p, _up) = start(&old);
    fs::remove_file(creds_path(&p)).expect("delete credentials");
    wait_log(&p, FAILED, 1, ATTEMPT_TIMEOUT);
    assert_still_serving(&p, &old, &new, "credentials file deleted");
    let t = Instant::now();
    fs::write(creds_path(&p), creds(&[("new", &new)])).expect("re-create");
    assert_in_force(&p, &new, t, "re-created file");
}


fn sighup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -HUP {pid} failed");
}

/// The credentials file sits behind a directory symlink (`live -> a`) in a directory
/// nobody watches; retargeting `live` is seen by no watch, only by SIGHUP (or, late,
/// by the 5-second poll).
#[test]
fn sighup_reloads_at_once() {
    let _serial = serial();
    let upstream = Upstream::start();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let store = tempfile::Builder::new()
        .prefix("portcullis-store")
        .tempdir()
        .expect("temp dir");
    let old = new_key();
    fs::create_dir(store.path().join("a")).expect("dir a");
    fs::write(store.path().join("a/credentials.yaml"), creds(&[("old", &old)])).expect("write a");
    std::os::unix::fs::symlink("a", store.path().join("live")).expect("live -> a");
    let live_creds = store.path().join("live/credentials.yaml");
    let main = format!(
        "listen: \"{addr}\"\nupstream: \"{}\"\nadmin_listen: \"{admin}\"\nenvironment: sandbox\n\
         credentials_file: \"{}\"\n{ROUTES}",
        upstream.addr,
        live_creds.display()
    );
    let dir = write_config(&main, "");
    fs::remove_file(dir.path().join("credentials.yaml")).expect("remove unused credentials.yaml");
    let p = spawn(dir, addr, admin);
    assert_eq!(status(&p, &old), 200);
    let pid = p.pid();

    // SIGHUP with nothing changed: the process lives on and serves.
    sighup(pid);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(status(&p, &old), 200, "the sidecar did not survive SIGHUP");

    for (round, target) in ["b", "c"].into_iter().enumerate() {
        let key = new_key();
        fs::create_dir(store.path().join(target)).expect("new dir");
        fs::write(
            store.path().join(target).join("credentials.yaml"),
            creds(&[("k", &key)]),
        )
        .expect("write");
        let tmp = store.path().join("live.tmp");
        std::os::unix::fs::symlink(target, &tmp).expect("symlink");
        fs::rename(&tmp, store.path().join("live")).expect("retarget live");
        let t = Instant::now();
        sighup(pid);
        assert_in_force(&p, &key, t, &format!("SIGHUP, round {round}"));
    }
    assert!(
        p.stdout().contains("\"trigger\":\"signal\""),
        "no reload was logged as caused by SIGHUP"
    );
}

#[test]
fn bad_files_keep_the_last_good_config_and_a_fix_recovers() {
    let _serial = serial();
    let mut good = new_key();
    let (p, _up) = start(&good);
    let creds_file = creds_path(&p);
    let main_file = p.config_path();
    let main_good = fs::read_to_string(&main_file).expect("read main");

    let mut failures = 0;
    // Each case: what to write (the bad file mentions the key that must not get in).
    type Case = (&'static str, Box<dyn Fn(&str) -> Option<String>>);
    let cases: Vec<Case> = vec![
        (
            "syntax error",
            Box::new(|k: &str| Some(creds(&[("bad", k)]).replace("permissions: [", "permissions: [["))),
        ),
        (
            "unknown field",
            Box::new(|k: &str| {
                Some(creds(&[("bad", k)]).replace("    expires:", "    colour: red\n    expires:"))
            }),
        ),
        (
            "half-written file",
            Box::new(|k: &str| {
                let full = creds(&[("bad", k), ("second", &new_key())]);
                let cut = full.rfind("key_hash: \"sha256:").expect("second hash") + 30;
                Some(full[..cut].to_string())
            }),
        ),
        ("missing file", Box::new(|_: &str| None)),
    ];
    for (what, bad) in &cases {
        let pending = new_key();
        match bad(&pending) {
            Some(text) => write_and_rename(&creds_file, &text),
            None => fs::remove_file(&creds_file).expect("remove"),
        }
        failures += 1;
        wait_log(&p, FAILED, failures, ATTEMPT_TIMEOUT);
        assert_still_serving(&p, &good, &pending, what);

        let t = Instant::now();
        write_and_rename(&creds_file, &creds(&[("fixed", &pending)]));
        assert_in_force(&p, &pending, t, &format!("fix after {what}"));
        assert_eq!(
            status(&p, &good),
            401,
            "{what}: the key the fix removed still works"
        );
        good = pending;
    }

    // The main config: an unknown field keeps everything as it was, too.
    let pending = new_key();
    write_and_rename(&creds_file, &creds(&[("good", &good), ("pending", &pending)]));
    // (the credentials change above is valid: let it land, then break the main file)
    assert_in_force(&p, &pending, Instant::now(), "a valid credentials change");
    write_and_rename(&main_file, &format!("{main_good}log_level: debug\n"));
    failures += 1;
    wait_log(&p, FAILED, failures, ATTEMPT_TIMEOUT);
    assert_eq!(
        status(&p, &good),
        200,
        "a bad main config stopped the last good one"
    );
    let t = Instant::now();
    write_and_rename(&main_file, &main_good);
    let newer = new_key();
    write_and_rename(&creds_file, &creds(&[("newer", &newer)]));
    assert_in_force(&p, &newer, t, "fix of the main config");

    // Every failure was logged with its file, and a syntax error with its line.
    let log = p.stdout();
    assert!(
        log.contains("credentials.yaml:"),
        "no failure named the credentials file:\n{log}"
    );
    let line_named = log.match_indices("credentials.yaml:").any(|(i, m)| {
        log[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    });
    assert!(
        line_named,
        "no failure named a line of the credentials file:\n{log}"
    );
    assert!(
        log.contains("portcullis.yaml"),
        "the main config's failure did not name it:\n{log}"
    );
    assert!(
        !log.contains(&good) && !log.contains(&sha256_hash(&good)[7..]),
        "a key or its hash was logged"
    );
}

#[test]
fn listen_addresses_need_a_restart_and_the_rest_applies() {
    let _serial = serial();
    let (old, new) = (new_key(), new_key());
    let (p, _up) = start(&old);
    let other: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let main = fs::read_to_string(p.config_path()).expect("read main");
    let main = main.replace(
        &format!("listen: \"{}\"", p.addr),
        &format!("listen: \"{other}\""),
    );
    assert!(main.contains(&other.to_string()));
    let t = Instant::now();
    write_and_rename(&p.config_path(), &main);
    write_and_rename(&creds_path(&p), &creds(&[("new", &new)]));
    assert_in_force(&p, &new, t, "a change beside a new listen address");
    assert!(
        std::net::TcpStream::connect_timeout(&other, Duration::from_millis(200)).is_err(),
        "the sidecar moved to the new listen address without a restart"
    );
    wait_log(&p, "only change at restart", 1, ATTEMPT_TIMEOUT);
}

/// Requests on loopback from several threads, with a key valid in every version, while
/// the credentials file is rewritten 50 times (by rename and in place): not one fails.
/// Half the threads open a connection per request, half keep one connection alive, so
/// requests on a connection that outlives several snapshots are covered too.
#[test]
fn no_request_fails_while_the_credentials_are_rewritten() {
    const THREADS: usize = 8;
    const REWRITES: usize = 50;
    let _serial = serial();
    let stable = new_key();
    let (p, _up) = start(&stable);
    // The clients get the address, not the `Proxy`: if this test panics, the `Proxy`
    // drops here (killing the sidecar) and `_stop` ends the clients.
    let addr = p.addr;
    let done = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(done.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let clients: Vec<_> = (0..THREADS)
        .map(|i| {
            let (done, stable) = (done.clone(), stable.clone());
            std::thread::spawn(move || {
                let keep_alive = i % 2 == 1;
                let mut conn: Option<TcpStream> = None;
                let mut statuses = Vec::new();
                while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let s = if keep_alive {
                        send_keep_alive(addr, &mut conn, &stable)
                    } else {
                        status_at(addr, &stable)
                    };
                    statuses.push(s);
                }
                statuses
            })
        })
        .collect();

    let reloads_before = p.stdout().matches(RELOADED).count();
    let mut last = String::new();
    for i in 0..REWRITES {
        last = new_key();
        let text = creds(&[("stable", &stable), (&format!("v{i}"), &last)]);
        if i % 2 == 0 {
            write_and_rename(&creds_path(&p), &text);
        } else {
            write_in_place(&creds_path(&p), &text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    assert_in_force(&p, &last, t, "the last of 50 rewrites");
    done.store(true, Ordering::Relaxed);

    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let failed: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    let reloads = p.stdout().matches(RELOADED).count() - reloads_before;
    eprintln!(
        "{} requests during {REWRITES} rewrites and {reloads} reloads",
        statuses.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed (0 = no response): {:?}",
        failed.len(),
        statuses.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(
        statuses.len() >= 100,
        "only {} requests were sent",
        statuses.len()
    );
    assert!(
        reloads >= 2,
        "the rewrites caused {reloads} reload(s): the load test did not overlap reloads"
    );
}

/// One request on a kept-alive connection (opened when there is none); its status, or
/// 0 if the request failed. A connection the server announced it would close is
/// replaced; any other error counts as a failed request (no retry hides it).
fn send_keep_alive(addr: SocketAddr, conn: &mut Option<TcpStream>, key: &str) -> u16 {
    let raw = request(
        "GET",
        "/v1/vaults/v-1/balances",
        &[("x-api-key", key), ("Connection", "keep-alive")],
    );
    if conn.is_none() {
        let Ok(s) = TcpStream::connect(addr) else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        *conn = Some(s);
    }
    let Some(stream) = conn.as_mut() else { return 0 };
    match stream.write_all(&raw).and_then(|()| read_response(stream, false)) {
        Ok(r) => {
            if r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                *conn = None;
            }
            r.status
        }
        Err(_) => {
            *conn = None;
            0
        }
    }
}

/// Sets the flag when dropped, also when the test panics.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
