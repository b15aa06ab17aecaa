//! The admin listener (SPEC §8) on `admin_listen`, a pingora listening service:
//!
//! - `GET /metrics` — [`Metrics::render`], `Content-Type: text/plain; version=0.0.4`;
//! - `GET /healthz` — 200 `ok` while the process serves (liveness);
//! - `GET /readyz` — 200 `ready` when a valid config is in force and the proxy listener
//!   accepts TCP connections, else 503 with the reason (readiness);
//! - any other path 404, any other method 405 (`Allow: GET`).
//!
//! It carries no credentials and answers anyone who can reach it: bind it to loopback or
//! a pod-internal address, as the default `127.0.0.1:9901` does.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{header, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::metrics::{self, Metrics};

/// How long `/readyz` waits for the proxy listener to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a request to the admin listener asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Metrics,
    Health,
    Ready,
    NotFound,
    MethodNotAllowed,
}

/// Routes a request by method and path (without query). Paths match exactly.
pub fn endpoint(method: &Method, path: &str) -> Endpoint {
    let known = match path {
        "/metrics" => Endpoint::Metrics,
        "/healthz" => Endpoint::Health,
        "/readyz" => Endpoint::Ready,
        _ => return Endpoint::NotFound,
    };
    if method == Method::GET {
        known
    } else {
        Endpoint::MethodNotAllowed
    }
}

/// The address `/readyz` connects to for a proxy listening on `listen`: the same port,
/// on loopback when `listen` is a wildcard address (`0.0.0.0`, `[::]`). `None` if `listen`
/// is not an `address:port` (config validation rejects that).
pub fn probe_addr(listen: &str) -> Option<SocketAddr> {
    let mut addr: SocketAddr = listen.parse().ok()?;
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => {}
    }
    Some(addr)
}

/// The admin application: reads the shared [`Metrics`], probes the proxy listener.
pub struct AdminApp {
    metrics: Arc<Metrics>,
    /// The proxy listener to probe for readiness; `None` skips the probe.
    proxy: Option<SocketAddr>,
}

impl AdminApp {
    /// An admin app over `metrics` whose `/readyz` also requires that `proxy_listen` (the
    /// proxy's `listen` setting) accepts connections.
    pub fn new(metrics: Arc<Metrics>, proxy_listen: &str) -> AdminApp {
        AdminApp {
            metrics,
            proxy: probe_addr(proxy_listen),
        }
    }

    /// `Ok` when ready to take traffic, else why not.
    pub async fn readiness(&self) -> Result<(), &'static str> {
        if !self.metrics.has_config() {
            return Err("no valid config is loaded");
        }
        let Some(addr) = self.proxy else {
            return Err("the proxy listen address is not an address:port");
        };
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err("the proxy listener is not accepting connections"),
        }
    }

    /// The response for `endpoint`.
    pub async fn answer(&self, endpoint: Endpoint) -> Response<Vec<u8>> {
        match endpoint {
            Endpoint::Metrics => reply(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                self.metrics.render().into_bytes(),
            ),
            Endpoint::Health => text(StatusCode::OK, "ok\n"),
            Endpoint::Ready => match self.readiness().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {why}\n")),
            },
            Endpoint::NotFound => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n"),
            Endpoint::MethodNotAllowed => {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET\n");
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
                resp
            }
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    reply(status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    resp
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let endpoint = endpoint(&req.method, req.uri.path());
        // The request body is never read: close rather than let it be taken for the next request.
        let has_body = req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || req.headers.contains_key(header::TRANSFER_ENCODING);
        if has_body || endpoint == Endpoint::MethodNotAllowed {
            session.set_keepalive(None);
        }
        self.answer(endpoint).await
    }
}

/// The admin listening service on `admin_listen` (one thread), ready for
/// `Server::add_service`. `proxy_listen` is the proxy's `listen`, probed by `/readyz`.
pub fn service(metrics: Arc<Metrics>, admin_listen: &str, proxy_listen: &str) -> Service<AdminApp> {
    let mut service = Service::new("portcullis admin".to_string(), AdminApp::new(metrics, proxy_listen));
    service.add_tcp(admin_listen);
    service.threads = Some(1);
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_get_to_the_three_endpoints() {
        assert_eq!(endpoint(&Method::GET, "/metrics"), Endpoint::Metrics);
        assert_eq!(endpoint(&Method::GET, "/healthz"), Endpoint::Health);
        assert_eq!(endpoint(&Method::GET, "/readyz"), Endpoint::Ready);
    }

    #[test]
    fn denies_other_paths_and_methods() {
        assert_eq!(endpoint(&Method::GET, "/"), Endpoint::NotFound);
        assert_eq!(endpoint(&Method::GET, "/metrics/"), Endpoint::NotFound);
        assert_eq!(endpoint(&Method::GET, "/METRICS"), Endpoint::NotFound);
        assert_eq!(endpoint(&Method::POST, "/metrics"), Endpoint::MethodNotAllowed);
        assert_eq!(endpoint(&Method::HEAD, "/healthz"), Endpoint::MethodNotAllowed);
        assert_eq!(endpoint(&Method::DELETE, "/nope"), Endpoint::NotFound);
    }

    #[test]
    fn probes_loopback_for_a_wildcard_listen_address() {
        assert_eq!(probe_addr("0.0.0.0:8080"), Some(([127, 0, 0, 1], 8080).into()));
        assert_eq!(probe_addr("[::]:8080"), "[::1]:8080".parse().ok());
        assert_eq!(probe_addr("10.1.2.3:80"), Some(([10, 1, 2, 3], 80).into()));
        assert_eq!(probe_addr("localhost"), None);
    }

    #[tokio::test]
    async fn is_ready_only_with_a_config_and_a_listening_proxy() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let metrics = Arc::new(Metrics::new());
        let app = AdminApp::new(metrics.clone(), &addr);
        assert_eq!(app.readiness().await, Err("no valid config is loaded"));
        assert_eq!(
            app.answer(Endpoint::Ready).await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );

        let snap = crate::metrics::tests::load_snapshot(&[], &[], &[]);
        metrics.on_snapshot(&snap, 0);
        assert_eq!(app.readiness().await, Ok(()));
        assert_eq!(app.answer(Endpoint::Ready).await.status(), StatusCode::OK);

        drop(listener);
        assert_eq!(
            app.readiness().await,
            Err("the proxy listener is not accepting connections")
        );
    }

    #[tokio::test]
    async fn answers_metrics_in_the_text_format() {
        let app = AdminApp::new(Arc::new(Metrics::new()), "127.0.0.1:1");
        let resp = app.answer(Endpoint::Metrics).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain; version=0.0.4");
        assert!(String::from_utf8_lossy(resp.body()).contains("# TYPE portcullis_denials_total counter"));
        let resp = app.answer(Endpoint::MethodNotAllowed).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET");
        assert_eq!(app.answer(Endpoint::Health).await.body(), b"ok\n");
    }
}
