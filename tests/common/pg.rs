//! A throwaway PostgreSQL cluster for one test: Debian's `postgresql` binaries, `initdb`
//! in a temp dir (as the `postgres` user when the tests run as root, since initdb refuses
//! root), one server on a free loopback port, stopped and removed on drop. No mock.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Pg {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's bin directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
    found.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql (.ci/run does)")
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl Pg {
    /// Runs a PostgreSQL tool (as `postgres` when root).
    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(name);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn start() -> Pg {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("portcullis-pg").tempdir().expect("temp dir");
        if is_root() {
            let st = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().expect("chown");
            assert!(st.success(), "chown the cluster dir to postgres");
        }
        let pg = Pg { port: super::free_port(), bin, dir };
        let data = pg.data();
        let out = pg.tool("initdb", &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        assert!(out.status.success(), "initdb failed:\n{}", String::from_utf8_lossy(&out.stderr));
        pg.up();
        let out = pg.psql("postgres", "CREATE DATABASE portcullis");
        assert!(out.status.success(), "createdb: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log");
        let out = self.tool("pg_ctl", &["-D", self.data().to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "30", "start"]);
        assert!(out.status.success(), "pg_ctl start failed:\n{}\n{}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.psql("postgres", "SELECT 1").status.success() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server at once (clients see their connections drop).
    pub fn down(&self) {
        let out = self.tool("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn psql(&self, db: &str, sql: &str) -> Output {
        self.tool("psql", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/portcullis", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.tool("pg_ctl", &["-D", self.data().to_str().unwrap_or(""), "-m", "immediate", "stop"]);
    }
}
