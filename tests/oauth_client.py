#!/usr/bin/env python3
"""Interop check of portcullis' OAuth 2.0 half with real client libraries.

    python3 tests/oauth_client.py BASE_URL CLIENT_ID SECRET ISSUER AUDIENCE ALLOWED_PATH DENIED_PATH

BASE_URL is where the sidecar listens (http://127.0.0.1:PORT); CLIENT_ID is the id as
presented (with tokens.client_id_prefix). The client must be granted the route
ALLOWED_PATH and not DENIED_PATH; ALLOWED_PATH must be forwarded to an upstream that
echoes the request as JSON (examples/mock_wallet.rs).

Uses authlib's OAuth2Session (client credentials grant, client_secret_basic and
client_secret_post), PyJWT's PyJWKClient (the published JWKS) and requests.
Driven by `cargo test --test tokens python_oauth_client` (tests/tokens.rs); exits 0
when every check passed, 1 with a list of failures otherwise, 2 on bad usage.
"""
import json
import sys
import time
import traceback
import urllib.parse

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.integrations.base_client.errors import OAuthError

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print(f"FAIL: {what}", file=sys.stderr)
    return cond


def metadata(base):
    r = requests.get(base + "/.well-known/oauth-authorization-server", timeout=10)
    check(r.status_code == 200, f"metadata status {r.status_code}")
    md = r.json()
    for field in ("issuer", "token_endpoint", "jwks_uri", "grant_types_supported"):
        check(field in md, f"metadata lacks {field}: {md}")
    check("client_credentials" in md.get("grant_types_supported", []), f"metadata grant types {md}")
    methods = md.get("token_endpoint_auth_methods_supported", [])
    check("client_secret_basic" in methods and "client_secret_post" in methods,
          f"metadata auth methods {methods}")
    return md


def local(base, url):
    """The advertised URL's path, on the address the sidecar actually listens on."""
    return base + urllib.parse.urlsplit(url).path


def fetch(token_url, client_id, secret, method, **kw):
    sess = OAuth2Session(client_id, secret, token_endpoint_auth_method=method)
    tok = sess.fetch_token(token_url, grant_type="client_credentials", **kw)
    return sess, tok


def verify_with_jwks(jwks_url, token, issuer, audience, client_id):
    header = jwt.get_unverified_header(token)
    check(header.get("typ", "").lower() in ("at+jwt", "application/at+jwt"), f"typ {header}")
    check(header.get("kid"), f"no kid in header {header}")
    jwks_client = PyJWKClient_cached(jwks_url)
    signing_key = jwks_client.get_signing_key_from_jwt(token)
    check(signing_key.key_id == header.get("kid"), f"JWKS kid {signing_key.key_id} != {header}")
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=["EdDSA", "ES256", "RS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    check(claims.get("client_id") == client_id, f"client_id claim {claims}")
    check(claims.get("sub") == client_id, f"sub claim {claims}")
    check(header.get("alg") == signing_key.algorithm_name or signing_key.algorithm_name is None,
          f"alg {header.get('alg')} vs JWKS {signing_key.algorithm_name}")
    # A token altered in its payload must fail the same verification.
    h, p, s = token.split(".")
    forged_claims = dict(claims, scope=claims.get("scope", "") + " vault:change")
    p2 = jwt.utils.base64url_encode(json.dumps(forged_claims).encode()).decode()
    try:
        jwt.decode(f"{h}.{p2}.{s}", signing_key.key, algorithms=[header["alg"]],
                   audience=audience, issuer=issuer)
        check(False, "PyJWT accepted a token with an altered payload")
    except jwt.InvalidSignatureError:
        pass
    return claims


_JWKS_CLIENTS = {}


def PyJWKClient_cached(url):
    if url not in _JWKS_CLIENTS:
        _JWKS_CLIENTS[url] = jwt.PyJWKClient(url)
    return _JWKS_CLIENTS[url]


def main(argv):
    if len(argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    base, client_id, secret, issuer, audience, allowed, denied = argv[1:]
    base = base.rstrip("/")

    md = metadata(base)
    check(md.get("issuer") == issuer, f"metadata issuer {md.get('issuer')} != {issuer}")
    token_url = local(base, md["token_endpoint"])
    jwks_url = local(base, md["jwks_uri"])

    seen_jti = set()
    for method in ("client_secret_basic", "client_secret_post"):
        sess, tok = fetch(token_url, client_id, secret, method)
        check(tok.get("token_type", "").lower() == "bearer", f"{method}: token_type {tok}")
        check(isinstance(tok.get("expires_in"), int) and 0 < tok["expires_in"] <= 86400,
              f"{method}: expires_in {tok}")
        check(tok.get("expires_at", 0) > time.time(), f"{method}: authlib expires_at {tok}")
        check(isinstance(tok.get("scope"), str) and tok["scope"], f"{method}: scope {tok}")
        claims = verify_with_jwks(jwks_url, tok["access_token"], issuer, audience, client_id)
        check(claims.get("scope") == tok["scope"], f"{method}: scope claim {claims} vs {tok}")
        check(claims["jti"] not in seen_jti, f"{method}: jti reused {claims['jti']}")
        seen_jti.add(claims["jti"])

        # The session attaches the token as Authorization: Bearer.
        r = sess.get(base + allowed, timeout=10)
        check(r.status_code == 200, f"{method}: GET {allowed} -> {r.status_code} {r.text}")
        if r.status_code == 200:
            echo = r.json()
            hdrs = {k.lower(): v for k, v in echo.get("headers", [])}
            cred = hdrs.get("x-auth-credential", "")
            # The credential id, i.e. the presented id without tokens.client_id_prefix.
            check(cred and client_id.endswith(cred), f"{method}: x-auth-credential {hdrs}")
            check(hdrs.get("x-auth-credential-type") == "client", f"{method}: credential type {hdrs}")
            check("authorization" not in hdrs, f"{method}: upstream saw Authorization {hdrs}")
        r = sess.get(base + denied, timeout=10)
        check(r.status_code == 403, f"{method}: GET {denied} -> {r.status_code} {r.text}")
        check('error="insufficient_scope"' in r.headers.get("WWW-Authenticate", ""),
              f"{method}: WWW-Authenticate {r.headers.get('WWW-Authenticate')}")

    # A narrower scope, asked through the library.
    first = tok["scope"].split()[0]
    _, narrow = fetch(token_url, client_id, secret, "client_secret_basic", scope=first)
    check(narrow.get("scope") == first, f"narrow scope {narrow.get('scope')} != {first}")

    # Wrong secret: the library raises the RFC 6749 §5.2 error.
    for method in ("client_secret_basic", "client_secret_post"):
        try:
            fetch(token_url, client_id, secret + "x", method)
            check(False, f"{method}: a wrong secret got a token")
        except OAuthError as e:
            check(e.error == "invalid_client", f"{method}: wrong secret -> {e.error}")

    # Unsupported grant through the library.
    try:
        OAuth2Session(client_id, secret).fetch_token(token_url, grant_type="password",
                                                     username="u", password="p")
        check(False, "grant_type=password got a token")
    except OAuthError as e:
        check(e.error == "unsupported_grant_type", f"password grant -> {e.error}")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("oauth_client.py: all checks passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception:  # an unexpected exception is a failure, with its trace
        traceback.print_exc()
        sys.exit(1)
