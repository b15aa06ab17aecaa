//! Claim checks for any Bearer token, with `now` as a parameter.
use serde_json::{Map, Value};

/// Checks `exp` (required), `nbf` and `iat` (with `leeway` seconds of skew), `iss` and `aud`.
/// Returns a description of the first failure, fit for an `invalid_token` answer.
pub fn validate(
    claims: &Map<String, Value>,
    issuer: &str,
    audience: &str,
    now: i64,
    leeway: i64,
) -> Result<(), &'static str> {
    let num = |k: &'static str| claims.get(k).map(|v| v.as_f64().ok_or(k));
    let exp = match num("exp") {
        None => return Err("the token has no exp claim"),
        Some(Err(_)) => return Err("the token's exp claim is not a number"),
        Some(Ok(e)) => e,
    };
    if (now as f64) >= exp + leeway as f64 {
        return Err("the token has expired");
    }
    match num("nbf") {
        Some(Err(_)) => return Err("the token's nbf claim is not a number"),
        Some(Ok(nbf)) if ((now + leeway) as f64) < nbf => return Err("the token is not valid yet"),
        _ => {}
    }
    match num("iat") {
        Some(Err(_)) => return Err("the token's iat claim is not a number"),
        Some(Ok(iat)) if ((now + leeway) as f64) < iat => return Err("the token was issued in the future"),
        _ => {}
    }
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err("the token's issuer is not accepted");
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !aud_ok {
        return Err("the token's audience is not accepted");
    }
    Ok(())
}

/// The `exp` claim as whole seconds (for caching), if present.
pub fn exp(claims: &Map<String, Value>) -> Option<i64> {
    claims.get("exp").and_then(Value::as_f64).map(|e| e as i64)
}

/// The `nbf` claim as whole seconds, if present.
pub fn nbf(claims: &Map<String, Value>) -> Option<i64> {
    claims.get("nbf").and_then(Value::as_f64).map(|e| e as i64)
}

/// Permission strings from a claim: a space-separated string or a JSON array of strings.
pub fn permission_strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }
    const NOW: i64 = 1_900_000_000;

    fn ok(v: Value) -> Result<(), &'static str> {
        validate(&c(v), "https://iss", "api", NOW, 30)
    }

    #[test]
    fn allows_a_good_token() {
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":NOW+60,"iat":NOW,"nbf":NOW})).is_ok());
        assert!(ok(json!({"iss":"https://iss","aud":["x","api"],"exp":NOW+60})).is_ok());
    }

    #[test]
    fn leeway_applies_both_ways() {
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":NOW-29})).is_ok());
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":NOW-30})).is_err());
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":NOW+60,"nbf":NOW+30})).is_ok());
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":NOW+60,"nbf":NOW+31})).is_err());
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":NOW+60,"iat":NOW+31})).is_err());
    }

    #[test]
    fn denies_bad_claims() {
        assert_eq!(ok(json!({"iss":"https://iss","aud":"api"})), Err("the token has no exp claim"));
        assert!(ok(json!({"iss":"https://iss","aud":"api","exp":"soon"})).is_err());
        assert!(ok(json!({"iss":"https://other","aud":"api","exp":NOW+60})).is_err());
        assert!(ok(json!({"iss":"https://iss","aud":"other","exp":NOW+60})).is_err());
        assert!(ok(json!({"iss":"https://iss","exp":NOW+60})).is_err());
        assert!(ok(json!({"aud":"api","exp":NOW+60})).is_err());
    }

    #[test]
    fn permission_claims() {
        assert_eq!(permission_strings(Some(&json!("a:read  b:read"))), vec!["a:read", "b:read"]);
        assert_eq!(permission_strings(Some(&json!(["a:read", 3, "b:read"]))), vec!["a:read", "b:read"]);
        assert!(permission_strings(None).is_empty());
    }
}
