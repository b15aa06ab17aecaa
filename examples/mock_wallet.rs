// Run: cargo run --example mock_wallet -- 127.0.0.1:3000
//
// A mock wallet API upstream for portcullis: std only (threads + std::net). Every
// HTTP/1.1 request is answered 200 with a JSON echo of what arrived:
//
//   {"service": "mock-wallet", "method": "GET", "target": "<raw request-target>",
//    "headers": [["Name", "value"], ...], "body_len": 0}
//
// Header names keep the case and order in which they were received, so a test can
// see exactly what the sidecar forwarded. Request bodies are read with
// Content-Length or chunked Transfer-Encoding; connections are kept alive until
// the client sends `Connection: close` (or speaks HTTP/1.0 without keep-alive).
// A target whose query holds `slow_ms=N` is answered after N milliseconds.
//
// The integration tests include this very file (`#[path]` module) and call
// `serve_logged`, so the upstream in the tests and the one in the quick start are
// one implementation.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest request head (request line plus headers) accepted, in bytes.
const MAX_HEAD: usize = 64 * 1024;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request-target exactly as received (not normalized, not decoded).
    pub target: String,
    /// Header names and values in received order, names as received.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    /// Every value of header `name` (compared case-insensitively).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Every request received so far, in arrival order. Shared with the caller of
/// `serve_logged` so a test can check what reached the upstream (and what did not).
pub type Log = Arc<Mutex<Vec<Seen>>>;

/// Serves HTTP/1.1 on `listener` until the process ends, a thread per connection.
pub fn serve(listener: TcpListener) {
    serve_logged(listener, Log::default());
}

/// Like `serve`, and records every request in `log` before answering it.
pub fn serve_logged(listener: TcpListener, log: Log) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    if let Err(e) = handle_connection(stream, &log) {
                        if e.kind() != io::ErrorKind::UnexpectedEof {
                            eprintln!("mock-wallet: connection error: {e}");
                        }
                    }
                });
            }
            Err(e) => eprintln!("mock-wallet: accept failed: {e}"),
        }
    }
}

/// Answers requests on one connection until the peer closes or asks to close.
fn handle_connection(stream: TcpStream, log: &Log) -> io::Result<()> {
    // Head and body go out in two writes: without TCP_NODELAY, Nagle and delayed ACKs
    // would add ~40 ms to every keep-alive response.
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(()); // clean close between requests
        };
        let (method, target, version, headers) = parse_head(&head)?;
        let body_len = read_body(&mut reader, &headers)?;
        let seen = Seen {
            method,
            target,
            headers,
            body_len,
        };
        log.lock().unwrap_or_else(|p| p.into_inner()).push(seen.clone());

        if let Some(ms) = query_param(&seen.target, "slow_ms").and_then(|v| v.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }

        let close = wants_close(&version, &seen.headers);
        let body = echo_json(&seen);
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if close {
            response.push_str("Connection: close\r\n");
        }
        response.push_str("\r\n");
        writer.write_all(response.as_bytes())?;
        writer.write_all(body.as_bytes())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// Reads up to and including the blank line that ends a request head. `None` when
/// the peer closed the connection before sending anything.
fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside request head"));
        }
        // Tolerate stray empty lines before a request line (RFC 9112 §2.2).
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            continue;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
    }
}

type Head = (String, String, String, Vec<(String, String)>);

fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad request line {request_line:?}"),
        ));
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            ));
        };
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok((method.to_string(), target.to_string(), version.to_string(), headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads the request body (chunked or Content-Length) and returns its length.
fn read_body(reader: &mut BufReader<TcpStream>, headers: &[(String, String)]) -> io::Result<usize> {
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.split(',').any(|c| c.trim().eq_ignore_ascii_case("chunked"))
    });
    if chunked {
        return read_chunked(reader);
    }
    let Some(len) = header(headers, "content-length") else {
        return Ok(0);
    };
    let len: usize = len
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad content-length {len:?}")))?;
    let copied = io::copy(&mut reader.by_ref().take(len as u64), &mut io::sink())?;
    if copied as usize != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside request body"));
    }
    Ok(len)
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<usize> {
    let mut total = 0usize;
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside chunked body"));
        }
        let size_text = size_line.trim().split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailer fields, then the final empty line.
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        let copied = io::copy(&mut reader.by_ref().take(size as u64), &mut io::sink())?;
        if copied as usize != size {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof inside chunk"));
        }
        total += size;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

fn wants_close(version: &str, headers: &[(String, String)]) -> bool {
    let tokens: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect();
    if tokens.iter().any(|t| t == "close") {
        return true;
    }
    version.eq_ignore_ascii_case("HTTP/1.0") && !tokens.iter().any(|t| t == "keep-alive")
}

/// The value of `name` in the query of `target`, if present (not decoded).
fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = target.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The echo body, fields in a fixed, readable order (service first).
fn echo_json(seen: &Seen) -> String {
    use serde_json::{json, Value};
    let headers: Vec<[&str; 2]> = seen.headers.iter().map(|(n, v)| [n.as_str(), v.as_str()]).collect();
    format!(
        r#"{{"service":"mock-wallet","method":{},"target":{},"headers":{},"body_len":{}}}"#,
        Value::from(seen.method.as_str()),
        Value::from(seen.target.as_str()),
        json!(headers),
        seen.body_len
    )
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".to_string());
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-wallet: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("mock-wallet: listening on {addr}");
    serve(listener);
}
