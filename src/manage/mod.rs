//! The management listener (SPEC §9): the API Access screen's JSON API under `/api/v1/`
//! and the console, a page over that API, at `/`. A pingora listening service of one
//! thread, as the admin listener is.
//!
//! A request is authenticated as on the proxy (an API key, this sidecar's token or an
//! external issuer's) or by the console's session cookie; its credential's allowlist
//! applies; what it may do follows from its own `api_access:*` permissions
//! ([`policy`]). Every change goes through the credential store (`crate::store`),
//! validated by the loader's own code and written atomically; the reload service is then
//! nudged, and the answer waits (up to a second) until the new snapshot is in force on
//! the proxy. Every request, allowed or refused, is one `"kind": "management"` audit line.
//!
//! The console is static files built into the binary (no CDN, font or script from
//! elsewhere) and talks to the API with `fetch`: one code path for the API's rules, and
//! the page can be tested in a real browser against the real API. Every answer carries
//! `Content-Security-Policy: default-src 'self'`.
pub mod api;
pub mod approval;
pub mod auth;
pub mod console;
pub mod policy;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{header, HeaderValue, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::config::{self, Shared, Snapshot};
use crate::last_used::LastUsed;
use crate::rejection::Rejection;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;
/// The security headers of every answer.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// What the management service shares between requests.
pub struct Manager {
    pub config: Shared,
    pub sessions: auth::Sessions,
    pub queue: approval::Queue,
    pub last_used: Option<Arc<LastUsed>>,
    /// Wakes the reload service after a write, so the change is in force at once.
    pub nudge: Option<Arc<Notify>>,
    /// The listener speaks TLS (the cookie is then `Secure`).
    pub tls: bool,
    /// The PostgreSQL store, opened at first use.
    pub pg: std::sync::OnceLock<Arc<crate::store::postgres::PgStore>>,
}

impl Manager {
    /// The store the config in force names.
    pub fn store_for(&self, snap: &Snapshot) -> Result<Arc<dyn crate::store::Store + Send + Sync>, String> {
        match snap.settings.store.database_url() {
            None => crate::store::FileStore::resolve(snap.settings.credentials_file.clone(), snap.settings.environment)
                .map(|s| Arc::new(s) as Arc<dyn crate::store::Store + Send + Sync>),
            Some(url) => {
                if let Some(pg) = self.pg.get() {
                    return Ok(pg.clone());
                }
                let pg = Arc::new(crate::store::postgres::PgStore::open(&url?, snap.settings.environment)?);
                Ok(self.pg.get_or_init(|| pg).clone())
            }
        }
    }
}

/// One answer, and what its audit line says.
pub struct Answer {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(header::HeaderName, String)>,
    /// `error` code of a refusal, for the audit line's `result`.
    pub error: Option<&'static str>,
    pub target: Option<String>,
    pub changes: Value,
    /// The store was written: wait for the reload before answering.
    pub wrote: bool,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Answer {
        Answer { status, body: Some(body), headers: Vec::new(), error: None, target: None, changes: Value::Null, wrote: false }
    }

    pub fn empty(status: u16) -> Answer {
        Answer { body: None, ..Answer::json(status, Value::Null) }
    }

    /// A refusal in SPEC §5's body shape (the request id is added when sent).
    pub fn error(status: u16, code: &'static str, description: impl Into<String>) -> Answer {
        Answer {
            error: Some(code),
            ..Answer::json(status, json!({"error": code, "error_description": description.into()}))
        }
    }

    /// `422` naming the bad fields.
    pub fn invalid(fields: serde_json::Map<String, Value>) -> Answer {
        let names: Vec<&str> = fields.keys().map(String::as_str).collect();
        let mut a = Answer::error(422, "invalid_fields", format!("invalid: {}", names.join(", ")));
        if let Some(b) = a.body.as_mut() {
            b["fields"] = Value::Object(fields);
        }
        a
    }

    pub fn rejection(r: &Rejection) -> Answer {
        let mut a = Answer::error(r.reason.status(), r.reason.code(), r.description.clone());
        if let Some(w) = r.www_authenticate() {
            a.headers.push((header::WWW_AUTHENTICATE, w.to_string()));
        }
        a
    }

    pub fn with_target(mut self, t: &str) -> Answer {
        self.target = Some(t.to_string());
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

/// A request as the handlers see it.
pub struct Call<'a> {
    pub method: &'a Method,
    /// The segments after `/api/v1/`.
    pub segments: Vec<&'a str>,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    pub client_ip: IpAddr,
    pub now: i64,
    pub snap: Arc<Snapshot>,
}

/// The management application.
pub struct ManageApp {
    pub manager: Arc<Manager>,
}

fn client_ip(session: &ServerSession, snap: &Snapshot) -> IpAddr {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let xff = session.req_header().headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes());
    crate::pipeline::client_ip::client_ip(peer, xff, &snap.settings)
}

/// The name of an API request, for the audit line (`credentials.create`, …).
fn action_of(method: &Method, segments: &[&str]) -> String {
    match (method.as_str(), segments) {
        ("GET", ["credentials"]) => "credentials.list".into(),
        ("POST", ["credentials"]) => "credentials.create".into(),
        ("GET", ["credentials", _]) => "credentials.show".into(),
        ("PATCH", ["credentials", _]) => "credentials.edit".into(),
        ("DELETE", ["credentials", _]) => "credentials.delete".into(),
        ("POST", ["credentials", _, op]) => format!("credentials.{op}"),
        ("GET", ["requests"]) => "requests.list".into(),
        ("POST", ["requests", _, op]) => format!("requests.{op}"),
        ("POST", ["session"]) => "session.sign_in".into(),
        ("DELETE", ["session"]) => "session.sign_out".into(),
        (m, s) => format!("{} {}", m.to_ascii_lowercase(), s.join("/")),
    }
}

impl ManageApp {
    async fn serve(&self, session: &mut ServerSession) -> (Response<Vec<u8>>, Option<Value>) {
        let started = Instant::now();
        let m = &self.manager;
        let snap = m.config.load_full();
        let now = config::unix_now();
        let request_id = crate::proxy::new_request_id();
        let req = session.req_header().clone();
        let path = req.uri.path().to_string();
        let ip = client_ip(session, &snap);

        // The console's files need no credential.
        if !path.starts_with("/api/") {
            let resp = console::answer(&req.method, &path);
            return (finish(resp.0, resp.1, resp.2, &request_id), None);
        }
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            let a = Answer::error(404, "not_found", "the API is under /api/v1/");
            return (self.respond(a, &request_id), None);
        };
        let segments: Vec<&str> = rest.split('/').collect();

        // The body, bounded.
        let mut body = Vec::new();
        let declared = req.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            session.set_keepalive(None);
            let a = Answer::error(413, "invalid_request", format!("the body is larger than {MAX_BODY} bytes"));
            return (self.respond(a, &request_id), None);
        }
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        session.set_keepalive(None);
                        let a = Answer::error(413, "invalid_request", format!("the body is larger than {MAX_BODY} bytes"));
                        return (self.respond(a, &request_id), None);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    let a = Answer::error(400, "invalid_request", "the body could not be read");
                    return (self.respond(a, &request_id), None);
                }
            }
        }

        let call = Call {
            method: &req.method,
            segments: segments.clone(),
            query: req.uri.query(),
            headers: &req.headers,
            body: &body,
            client_ip: ip,
            now,
            snap: snap.clone(),
        };
        let action = action_of(&req.method, &segments);
        let (answer, who) = api::handle(m, &call);
        let mut answer = answer;
        if answer.wrote {
            self.wait_in_force(&snap).await;
            answer.wrote = false;
        }
        let audit = json!({
            "kind": "management",
            "time": crate::store::span::rfc3339(now),
            "request_id": request_id,
            "client_ip": ip.to_string(),
            "actor": who.as_ref().map(|a| a.name().to_string()),
            "credential": who.as_ref().map(|a| a.credential.to_string()),
            "action": action,
            "target": answer.target,
            // SPEC §9: every request, allowed or refused; the refusal's code beside it.
            "result": if answer.status < 400 { "allowed" } else { "refused" },
            "error": answer.error,
            "status": answer.status,
            "changes": answer.changes,
            "latency_us": started.elapsed().as_micros() as u64,
        });
        (self.respond(answer, &request_id), Some(audit))
    }

    /// Waits until a snapshot newer than `before` is in force (the write's reload), at most
    /// a second.
    async fn wait_in_force(&self, before: &Arc<Snapshot>) {
        if let Some(n) = &self.manager.nudge {
            n.notify_one();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if !Arc::ptr_eq(&self.manager.config.load_full(), before) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn respond(&self, a: Answer, request_id: &str) -> Response<Vec<u8>> {
        let mut body = a.body;
        if let Some(Value::Object(o)) = body.as_mut() {
            if o.contains_key("error") {
                o.insert("request_id".into(), Value::String(request_id.to_string()));
            }
        }
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap_or_default()).unwrap_or_default();
        let mut resp = finish(a.status, "application/json", bytes, request_id);
        for (k, v) in a.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().append(k, v);
            }
        }
        resp
    }
}

/// A response with the headers every answer carries.
fn finish(status: u16, content_type: &'static str, body: Vec<u8>, request_id: &str) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if status == 405 {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, PATCH, DELETE"));
    }
    resp
}

#[async_trait]
impl ServeHttp for ManageApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (resp, audit) = self.serve(session).await;
        if let Some(line) = audit {
            crate::telemetry::audit_management(line);
        }
        resp
    }
}

/// The management listening service (one thread), ready for `Server::add_service`.
pub fn service(manager: Arc<Manager>, settings: &config::ManagementSettings) -> Result<Service<ManageApp>, String> {
    let mut service = Service::new("portcullis management".to_string(), ManageApp { manager });
    match &settings.tls {
        None => service.add_tcp(&settings.listen),
        Some((cert, key)) => service
            .add_tls(&settings.listen, &cert.to_string_lossy(), &key.to_string_lossy())
            .map_err(|e| format!("management.tls: {e}"))?,
    }
    service.threads = Some(1);
    Ok(service)
}
