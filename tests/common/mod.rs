//! Harness for the integration tests: the real `portcullis` binary on ephemeral
//! ports, the mock wallet upstream (examples/mock_wallet.rs, the same code as the
//! quick start's), and a raw HTTP/1.1 client that sends exactly the bytes a test
//! gives it — so attack targets such as `GET /v1/../admin` reach the sidecar
//! unnormalized.
#![allow(dead_code)]

#[path = "../../examples/mock_wallet.rs"]
pub mod mock_wallet;
pub mod pg;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

pub use mock_wallet::Seen;

/// How long `Proxy::start` waits for the listener to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Read/write timeout of the raw client.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Ports, keys, hashes

/// A TCP port on 127.0.0.1 that was free a moment ago (bind :0, read, drop), and not
/// handed to another test of this binary before: the kernel may give a port back soon
/// after it is dropped, and two sidecars of tests running at once, given one port (one's
/// proxy, the other's admin listener), would fight over it (a token test once got the
/// admin listener's 404 from its proxy's port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `sha256:<64 lowercase hex>` of the whole key string, as `key_hash` stores it.
pub fn sha256_hash(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A fresh random API key for one test run (never a literal in the repo).
pub fn new_key() -> String {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("pk_test_{}", hex::encode(bytes))
}

/// A fresh random marker, sent in `x-test-marker` to find a request in the
/// upstream's log (or prove it never arrived).
pub fn new_marker() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

// ---------------------------------------------------------------------------
// Mock upstream

/// The mock wallet API, serving on an ephemeral port in a background thread for
/// the rest of the test process.
pub struct Upstream {
    pub addr: SocketAddr,
    pub log: mock_wallet::Log,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream addr");
        let log = mock_wallet::Log::default();
        let thread_log = log.clone();
        std::thread::spawn(move || mock_wallet::serve_logged(listener, thread_log));
        Upstream { addr, log }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many requests have arrived.
    pub fn count(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The requests that carried `x-test-marker: <marker>`.
    pub fn with_marker(&self, marker: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.header_values("x-test-marker").contains(&marker))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The sidecar

/// A running `portcullis serve`, killed on drop. Its config files and captured
/// stdout/stderr live in `dir`.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// The path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// Writes `portcullis.yaml` and `credentials.yaml` into a new temp dir.
pub fn write_config(main_yaml: &str, credentials_yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("portcullis-test")
        .tempdir()
        .expect("temp dir");
    fs::write(dir.path().join("portcullis.yaml"), main_yaml).expect("write portcullis.yaml");
    fs::write(dir.path().join("credentials.yaml"), credentials_yaml).expect("write credentials.yaml");
    dir
}

/// The head of a main config: listen and admin ports chosen here, the upstream
/// given, sandbox, `credentials.yaml` beside it, one worker thread (a sidecar's usual
/// setting; the tests that write their own configs run one thread per core). Tests append
/// their own fields (`routes`, `trusted_proxies`, `upstream_timeout`, …).
pub fn main_head(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "listen: \"{listen}\"\nupstream: \"{upstream}\"\nadmin_listen: \"{admin}\"\n\
         environment: sandbox\ncredentials_file: credentials.yaml\nthreads: 1\n"
    )
}

impl Proxy {
    /// The sidecar's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the sidecar with `main_head(..)` + `main_extra` as `portcullis.yaml`
    /// and `credentials_yaml`, and waits until it accepts connections.
    pub fn start(upstream: SocketAddr, main_extra: &str, credentials_yaml: &str) -> Proxy {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let main = format!("{}{}", main_head(addr, admin_addr, upstream), main_extra);
        let dir = write_config(&main, credentials_yaml);
        Proxy::spawn(dir, addr, admin_addr)
    }

    /// Starts `portcullis serve` on the config already in `dir`, listening on
    /// `addr` as that config says; panics with its stderr if it exits first.
    pub fn spawn(dir: tempfile::TempDir, addr: SocketAddr, admin_addr: SocketAddr) -> Proxy {
        let stdout = fs::File::create(dir.path().join("stdout.log")).expect("stdout.log");
        let stderr = fs::File::create(dir.path().join("stderr.log")).expect("stderr.log");
        let child = Command::new(bin())
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("portcullis.yaml"))
            .current_dir(dir.path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn portcullis");
        let mut proxy = Proxy {
            child,
            addr,
            admin_addr,
            dir,
        };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "portcullis exited before listening on {} ({status})\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    self.addr,
                    self.stderr(),
                    self.stdout()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "portcullis did not listen on {} within {STARTUP_TIMEOUT:?}\n--- stderr ---\n{}",
                    self.addr,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the sidecar to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.yaml")
    }

    /// Everything the sidecar wrote to stdout so far (the audit log).
    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends raw bytes from 127.0.0.1 and reads the response.
    pub fn send(&self, raw: &[u8]) -> Response {
        send_raw(self.addr, raw)
    }

    /// Sends raw bytes from the local address `from` (e.g. 127.0.0.5).
    pub fn send_from(&self, from: IpAddr, raw: &[u8]) -> Response {
        send_raw_from(from, self.addr, raw)
    }

    pub fn try_send(&self, raw: &[u8]) -> io::Result<Response> {
        try_send_raw(None, self.addr, raw)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The sidecar logs (audit and operational) go to stdout; show the tail.
            let out = self.stdout();
            let lines: Vec<&str> = out.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "--- portcullis {} stderr ---\n{}\n--- stdout (last 40 lines) ---\n{tail}",
                self.addr,
                self.stderr()
            );
        }
    }
}

/// Runs the binary with `args` to completion (at most `timeout`; killed after),
/// returning its output; `None` if it had to be killed.
pub fn run_bin(args: &[&str], cwd: &Path, timeout: Duration) -> Option<Output> {
    let out_path = cwd.join(format!("run-{}.out", new_marker()));
    let err_path = cwd.join(format!("run-{}.err", new_marker()));
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("out file"))
        .stderr(fs::File::create(&err_path).expect("err file"))
        .spawn()
        .expect("spawn portcullis");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = status?;
    Some(Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    })
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client

/// A parsed HTTP response. Header names are lower-cased.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.body_text()
            )
        })
    }

    /// The body as JSON, or `None`.
    pub fn try_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Builds a request: `METHOD TARGET HTTP/1.1`, `Host: localhost` unless the caller
/// sent a `Host` header, the given headers in order, and `Connection: close`
/// unless the caller sent a `Connection` header.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        s.push_str("Host: localhost\r\n");
    }
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("connection")) {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Sends `method path` with `headers` and, when given, a JSON body (its `Content-Type`
/// and `Content-Length` set), and reads the response: a call of the management API.
pub fn send_json(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&serde_json::Value>) -> Response {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let len = body.len().to_string();
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !body.is_empty() {
        all.push(("Content-Type", "application/json"));
    }
    all.push(("Content-Length", &len));
    let mut raw = request(method, path, &all);
    raw.extend_from_slice(body.as_bytes());
    send_raw(addr, &raw)
}

pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    try_send_raw(None, addr, raw).unwrap_or_else(|e| {
        panic!(
            "request to {addr} failed: {e}\n--- request ---\n{}",
            String::from_utf8_lossy(raw)
        )
    })
}

pub fn send_raw_from(from: IpAddr, addr: SocketAddr, raw: &[u8]) -> Response {
    try_send_raw(Some(from), addr, raw).unwrap_or_else(|e| {
        panic!(
            "request from {from} to {addr} failed: {e}\n--- request ---\n{}",
            String::from_utf8_lossy(raw)
        )
    })
}

/// Connects to `addr` (from local address `from`, port chosen by the kernel, if
/// given), writes `raw` as is, and reads one response.
pub fn try_send_raw(from: Option<IpAddr>, addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let mut stream = connect(from, addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(raw)?;
    stream.flush()?;
    let head_request = raw.starts_with(b"HEAD ");
    read_response(&mut stream, head_request)
}

fn connect(from: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect_timeout(&addr, IO_TIMEOUT);
    };
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

/// Reads one response: head, then a body framed by chunked encoding,
/// Content-Length, or the end of the connection.
pub fn read_response(stream: &mut TcpStream, head_request: bool) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a complete response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header line {line:?}")))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());

    let no_body = head_request || status / 100 == 1 || status == 204 || status == 304;
    let body = if no_body {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        read_chunked(stream, &mut rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad content-length {len:?}")))?;
        while rest.len() < len {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside body",
                ));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        stream.read_to_end(&mut rest)?;
        rest
    };
    Ok(Response { status, headers, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body; `buf` holds bytes already read past the head.
fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    let mut fill = |buf: &mut Vec<u8>, want: usize| -> io::Result<()> {
        while buf.len() < want {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside chunked body",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    let mut body = Vec::new();
    let mut pos = 0usize;
    loop {
        // Size line.
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            let want = buf.len() + 1;
            fill(buf, want)?;
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size_text = size_text.split(';').next().unwrap_or_default().trim().to_string();
        let size = usize::from_str_radix(&size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size_text:?}")))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers until an empty line; tolerate a peer that closes early.
            loop {
                match find(&buf[pos..], b"\r\n") {
                    Some(0) => return Ok(body),
                    Some(i) => pos += i + 2,
                    None => {
                        let want = buf.len() + 1;
                        if fill(buf, want).is_err() {
                            return Ok(body);
                        }
                    }
                }
            }
        }
        fill(buf, pos + size + 2)?;
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

// ---------------------------------------------------------------------------
// Assertions shared by the suites

/// Checks the error contract of SPEC §5: `status`, `Content-Type:
/// application/json`, a JSON body with `error` = `code`, a non-empty
/// `error_description` and `request_id`. Returns the body. `code` `None` accepts
/// any non-empty `error`.
pub fn assert_error(resp: &Response, status: u16, code: Option<&str>) -> serde_json::Value {
    let ctx = format!(
        "status {} headers {:?} body {:?}",
        resp.status,
        resp.headers,
        resp.body_text()
    );
    assert_eq!(resp.status, status, "unexpected status; {ctx}");
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "error Content-Type is not application/json; {ctx}"
    );
    let body = resp
        .try_json()
        .unwrap_or_else(|| panic!("error body is not JSON; {ctx}"));
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `error` in body; {ctx}"));
    assert!(!error.is_empty(), "empty `error`; {ctx}");
    if let Some(code) = code {
        assert_eq!(error, code, "unexpected error code; {ctx}");
    }
    let desc = body["error_description"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `error_description`; {ctx}"));
    assert!(!desc.is_empty(), "empty `error_description`; {ctx}");
    let rid = body["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `request_id`; {ctx}"));
    assert!(!rid.is_empty(), "empty `request_id`; {ctx}");
    body
}

/// Like `assert_error`, but returns the mismatch as text instead of panicking
/// (for table-driven tests that report every failing case at once).
pub fn check_error(resp: &Response, status: u16, code: &str) -> Result<(), String> {
    let ctx = format!("got status {} body {:?}", resp.status, resp.body_text());
    if resp.status != status {
        return Err(format!("expected {status} {code}; {ctx}"));
    }
    if !resp
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json")
    {
        return Err(format!(
            "Content-Type {:?} is not application/json; {ctx}",
            resp.header("content-type")
        ));
    }
    let Some(body) = resp.try_json() else {
        return Err(format!("body is not JSON; {ctx}"));
    };
    if body["error"].as_str() != Some(code) {
        return Err(format!("expected error {code:?}; {ctx}"));
    }
    for field in ["error_description", "request_id"] {
        if body[field].as_str().is_none_or(str::is_empty) {
            return Err(format!("missing or empty {field}; {ctx}"));
        }
    }
    Ok(())
}

/// What the mock upstream echoed back: the request exactly as it arrived there.
#[derive(Debug)]
pub struct Echo {
    pub method: String,
    pub target: String,
    /// Names as received upstream (original case), values.
    pub headers: Vec<(String, String)>,
}

impl Echo {
    /// Parses the mock's echo from a forwarded (200) response; panics otherwise.
    pub fn from(resp: &Response) -> Echo {
        assert_eq!(
            resp.status,
            200,
            "expected a forwarded 200; body {:?}",
            resp.body_text()
        );
        let v = resp.json();
        assert_eq!(
            v["service"], "mock-wallet",
            "response is not the mock upstream's echo: {v}"
        );
        let headers = v["headers"]
            .as_array()
            .expect("echo headers")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().expect("header name").to_string(),
                    pair[1].as_str().expect("header value").to_string(),
                )
            })
            .collect();
        Echo {
            method: v["method"].as_str().expect("method").to_string(),
            target: v["target"].as_str().expect("target").to_string(),
            headers,
        }
    }

    /// Every value of header `name` (case-insensitive).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`; panics if absent or repeated.
    pub fn one(&self, name: &str) -> &str {
        match self.values(name).as_slice() {
            [v] => v,
            other => panic!(
                "upstream saw {} `{name}` headers {other:?}; all headers {:?}",
                other.len(),
                self.headers
            ),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        !self.values(name).is_empty()
    }

    /// Header names seen upstream that, lower-cased with `_` and `.` read as
    /// `-`, start with `x-auth-` (SPEC §5 step 8's rule).
    pub fn x_auth_names(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n.to_ascii_lowercase().replace(['_', '.'], "-").starts_with("x-auth-"))
            .collect()
    }
}
