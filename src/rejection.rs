//! Every denial: its status, stable reason code, JSON body and `WWW-Authenticate`.
//! The same code is in the body, the audit log and the metric label.
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// Why a request was not forwarded. The code strings are a stable contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidRequest,
    /// `CONNECT`: a tunnel is never opened (SPEC §5 step 2).
    MethodNotAllowed,
    MissingCredential,
    InvalidToken,
    InvalidApiKey,
    IpNotAllowed,
    RouteNotAllowed,
    InsufficientScope,
    UpstreamUnavailable,
    UpstreamTimeout,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::InvalidRequest,
        Reason::MethodNotAllowed,
        Reason::MissingCredential,
        Reason::InvalidToken,
        Reason::InvalidApiKey,
        Reason::IpNotAllowed,
        Reason::RouteNotAllowed,
        Reason::InsufficientScope,
        Reason::UpstreamUnavailable,
        Reason::UpstreamTimeout,
    ];

    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "invalid_request",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::MissingCredential => "missing_credential",
            Reason::InvalidToken => "invalid_token",
            Reason::InvalidApiKey => "invalid_api_key",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::RouteNotAllowed => "route_not_allowed",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::UpstreamTimeout => "upstream_timeout",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::InvalidRequest => 400,
            Reason::MethodNotAllowed => 405,
            Reason::MissingCredential | Reason::InvalidToken | Reason::InvalidApiKey => 401,
            Reason::IpNotAllowed | Reason::RouteNotAllowed | Reason::InsufficientScope => 403,
            Reason::UpstreamUnavailable => 502,
            Reason::UpstreamTimeout => 504,
        }
    }
}

/// A denial with a human-readable description (never containing a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub description: String,
}

impl Rejection {
    pub fn new(reason: Reason, description: impl Into<String>) -> Self {
        Rejection {
            reason,
            description: description.into(),
        }
    }

    /// The `WWW-Authenticate` value, for 401s and `insufficient_scope`.
    pub fn www_authenticate(&self) -> Option<String> {
        let realm = "Bearer realm=\"portcullis\"";
        match self.reason {
            Reason::MissingCredential | Reason::InvalidApiKey => Some(realm.to_string()),
            Reason::InvalidToken => Some(format!(
                "{realm}, error=\"invalid_token\", error_description=\"{}\"",
                quote_safe(&self.description)
            )),
            Reason::InsufficientScope => Some(format!("{realm}, error=\"insufficient_scope\"")),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> Bytes {
        Bytes::from(
            serde_json::json!({
                "error": self.reason.code(),
                "error_description": self.description,
                "request_id": request_id,
            })
            .to_string(),
        )
    }

    /// The full response header for a body of `body_len` bytes.
    pub fn response_header(&self, request_id: &str, body_len: usize) -> pingora::Result<ResponseHeader> {
        let mut resp = ResponseHeader::build(self.reason.status(), Some(5))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body_len.to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        resp.insert_header("x-request-id", request_id)?;
        if let Some(w) = self.www_authenticate() {
            resp.insert_header("www-authenticate", w)?;
        }
        Ok(resp)
    }
}

/// Keeps a description safe inside a quoted-string.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Reason::InvalidRequest.status(), 400);
        assert_eq!(Reason::InvalidApiKey.status(), 401);
        assert_eq!(Reason::InsufficientScope.status(), 403);
    }

    #[test]
    fn challenge_carries_error_only_for_tokens() {
        let r = Rejection::new(Reason::InvalidToken, "token \"expired\"");
        let w = r.www_authenticate().unwrap();
        assert!(w.contains("error=\"invalid_token\""));
        assert!(!w.contains("\"expired\""));
        let k = Rejection::new(Reason::InvalidApiKey, "unknown");
        assert_eq!(k.www_authenticate().unwrap(), "Bearer realm=\"portcullis\"");
        assert!(Rejection::new(Reason::IpNotAllowed, "x").www_authenticate().is_none());
    }

    #[test]
    fn body_is_json() {
        let b = Rejection::new(Reason::RouteNotAllowed, "no route").body("rid");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "route_not_allowed");
        assert_eq!(v["request_id"], "rid");
    }
}
