#!/usr/bin/env bash
# Quick start: ./examples/quickstart.sh
# Builds portcullis, starts the mock wallet upstream (examples/mock_wallet.rs) on
# 127.0.0.1:3000 and the sidecar on 127.0.0.1:8080 with config/portcullis.yaml (its
# console and management API on 127.0.0.1:9443), shows one request allowed and some
# denied, then keeps both running until Ctrl-C.
# QUICKSTART_EXIT=1 stops after the demo (used by CI to keep this script true).
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
if ! need cmake || ! need curl; then
  echo "==> installing build tools (cmake, curl)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake curl >/dev/null
fi

echo "==> building (the first build of pingora takes a few minutes)"
cargo build --quiet --bin portcullis --example mock_wallet

BIN=target/debug/portcullis
# The token signing key is a secret and never in the repository: make one on first run.
[ -f config/keys/signing.pem ] || "$BIN" keygen --out config/keys/signing.pem
"$BIN" check --config config/portcullis.yaml

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

target/debug/examples/mock_wallet 127.0.0.1:3000 >/tmp/portcullis-mock-wallet.log 2>&1 &
pids+=($!)
"$BIN" serve --config config/portcullis.yaml >/tmp/portcullis-audit.log 2>&1 &
pids+=($!)

for _ in $(seq 1 50); do
  curl -s -o /dev/null http://127.0.0.1:8080/v1/status && break
  sleep 0.2
done

show() {
  echo
  printf '$'; printf ' %q' "$@" | sed "s/$token_re/\$TOKEN/g"; echo
  "$@" -s -w '\n-> HTTP %{http_code}\n' || true
}
token_re='eyJ[A-Za-z0-9_.-]*'

echo
echo "==> allowed: alice's example key reads balances of vault v-123"
show curl -H 'x-api-key: example-wallets-key-not-secret' http://127.0.0.1:8080/v1/vaults/v-123/balances
echo
echo "==> denied: no credential (401)"
show curl http://127.0.0.1:8080/v1/vaults/v-123/balances
echo
echo "==> denied: a key scoped to vault v-123 asks for vault v-999 (403)"
show curl -H 'x-api-key: example-vault-reader-key-not-secret' http://127.0.0.1:8080/v1/vaults/v-999/balances
echo
echo "==> denied: a path traversal attempt (400)"
show curl --path-as-is -H 'x-api-key: example-wallets-key-not-secret' 'http://127.0.0.1:8080/v1/vaults/v-123/../../admin'
echo
echo "==> OAuth 2.0 client credentials: get a token, then use it"
echo "\$ curl -d grant_type=client_credentials -u reporting-service:example-reporting-secret-not-secret http://127.0.0.1:8080/oauth/token"
resp=$(curl -s -d grant_type=client_credentials -u reporting-service:example-reporting-secret-not-secret http://127.0.0.1:8080/oauth/token)
echo "$resp" | cut -c1-120; echo "   …"
token=$(printf '%s' "$resp" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
show curl -H "Authorization: Bearer $token" http://127.0.0.1:8080/v1/transactions
echo
echo "==> denied: the reporting token may not create vaults (403)"
show curl -X POST -H "Authorization: Bearer $token" http://127.0.0.1:8080/v1/vaults
echo
echo "==> the management API: the example administrator lists the OAuth clients"
show curl -H 'x-api-key: example-admin-key-not-secret' 'http://127.0.0.1:9443/api/v1/credentials?kind=client'
echo
echo "==> the API Access console: open http://127.0.0.1:9443/ and sign in with the example"
echo "    administrator's API key: example-admin-key-not-secret"
echo "    (changes made there are written to config/credentials.yaml and in force at once)"
echo
echo "Audit log: /tmp/portcullis-audit.log"
if [ "${QUICKSTART_EXIT:-0}" = "1" ]; then exit 0; fi
echo "portcullis listens on 127.0.0.1:8080 (upstream: mock wallet on 127.0.0.1:3000). Ctrl-C stops both."
wait
