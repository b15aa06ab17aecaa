#!/usr/bin/env bash
# Token-endpoint flood: ./benches/flood.sh [flood_seconds=20] [connections=64]
#
# SPEC §6 abuse bounds: "64 concurrent wrong-secret connections keep the sidecar within
# 256 MB of its idle figure, and API-key requests keep their latency within 2× of idle."
#
# On this machine, over loopback only: the mock wallet upstream (examples/mock_wallet.rs)
# and portcullis with an argon2id OAuth client (made by `portcullis credentials create`)
# and an API key. For each mode, on a fresh sidecar:
#   1. warm up (API-key requests and one good token request), then measure the idle RSS
#      (VmRSS) and the idle p99 of an API-key probe (wrk -t1 -c4 --latency);
#   2. flood: CONNS connections POST /oauth/token with the client's id and a wrong secret
#      (benches/flood_post.lua, which counts the answers by status) for SECS seconds, while
#      the same API-key probe runs alongside; RSS is sampled every 0.5 s;
#   3. wait 30 s and sample RSS again (is the memory handed back?).
# Modes:
#   throttled  the defaults: tokens.failure_limit 10 a minute, so after 10 failures the
#              flood is answered 429 slow_down without verifying anything;
#   open       tokens.failure_limit 1,000,000,000: every request reaches argon2, and only
#              the verification bound (max_concurrent_verifications, 503) protects.
# Targets: peak RSS − idle RSS ≤ 256 MB; probe p99 under flood ≤ 2× idle p99.
#
# Environment: FLOOD_MODES ("throttled open"), FLOOD_SLOTS (sets
# tokens.max_concurrent_verifications; default: unset = 2 × cores), FLOOD_IDLE_SECS (10),
# FLOOD_SETTLE_SECS (30), FLOOD_BASE_PORT (18100), FLOOD_SIDECAR_ENV (extra environment for
# the sidecar only, e.g. "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072").
# Bounded: every wrk run has a fixed duration; everything is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
CONNS=${2:-64}
MODES=${FLOOD_MODES:-throttled open}
SLOTS=${FLOOD_SLOTS:-}
IDLE_SECS=${FLOOD_IDLE_SECS:-10}
SETTLE_SECS=${FLOOD_SETTLE_SECS:-30}
BASE=${FLOOD_BASE_PORT:-18100}
UP=127.0.0.1:$BASE PC=127.0.0.1:$((BASE+1)) ADMIN=127.0.0.1:$((BASE+2))
PROBE_SECS=$((SECS > 4 ? SECS - 2 : SECS)) # the probe runs inside the flood's window

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --quiet --release --locked --bin portcullis --example mock_wallet
bin=target/release/portcullis

work=$(mktemp -d)
pids=()
sidecar=
cleanup() {
  for p in "${pids[@]}" $sidecar; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

key="flood-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
"$bin" keygen --out "$work/signing.pem" >/dev/null
write_config() { # failure_limit|""
  {
    cat <<YAML
listen: "$PC"
upstream: "$UP"
admin_listen: "$ADMIN"
environment: production
credentials_file: credentials.yaml
tokens:
  issuer: "https://flood.test"
  audience: "api"
  signing_key: signing.pem
YAML
    [ -n "$1" ] && echo "  failure_limit: $1"
    [ -n "$SLOTS" ] && echo "  max_concurrent_verifications: $SLOTS"
    cat <<YAML
routes:
  - match: "GET /v1/vaults/{vault_id}/balances"
    require: "balances:read"
YAML
  } > "$work/portcullis.yaml"
}
write_config ""
cat > "$work/credentials.yaml" <<YAML
api_keys:
  - name: probe-key
    key_hash: "sha256:$(hash "$key")"
    permissions: ["balances:read@vault/v-1"]
    allowed_ips: ["127.0.0.1"]
    expires: 2099-01-01
YAML
# The client's secret is stored as argon2id (the CLI's defaults), as in production.
created=$("$bin" credentials --config "$work/portcullis.yaml" create client --name flood-client \
  --permission "balances:read@vault" --allow-ip 127.0.0.1 --expires 2099-01-01 \
  --description "Flood - benchmark client" --output json)
secret=$(printf '%s\n' "$created" | sed -n 's/.*"secret": *"\([^"]*\)".*/\1/p')
[ -n "$secret" ] || { echo "could not create the client: $created" >&2; exit 1; }
grep -q 'secret_hash: "\$argon2id\$' "$work/credentials.yaml" || { echo "client secret is not argon2id" >&2; exit 1; }
wrong_basic=$(printf '%s' "flood-client:pcs_live_wrong-secret-$RANDOM" | base64 -w0)

target/release/examples/mock_wallet "$UP" 2>/dev/null & pids+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://$UP/" && break; sleep 0.1; done

path=/v1/vaults/v-1/balances
probe() { wrk -t1 -c4 -d"$1s" --latency -H "x-api-key: $key" "http://$PC$path"; }
# to_ms VALUE: wrk prints 1.23ms / 850.00us / 1.02s
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else {sub(/s$/,"",v); print v*1000} }'; }
pct_of() { to_ms "$(awk -v p="$2%" '$1==p {print $2}' "$1")"; } # wrk-output 50|99
field() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; } # pid VmRSS|VmHWM|Threads

start_sidecar() {
  env ${FLOOD_SIDECAR_ENV:-} "$bin" serve --config "$work/portcullis.yaml" >/dev/null 2>"$work/sidecar.err" &
  sidecar=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$PC/" && return 0; sleep 0.1; done
  echo "the sidecar did not start:" >&2; tail -5 "$work/sidecar.err" >&2; exit 1
}
stop_sidecar() { kill "$sidecar" 2>/dev/null || true; wait "$sidecar" 2>/dev/null || true; sidecar=; }

run_mode() { # name
  local mode=$1 limit=""
  [ "$mode" = open ] && limit=1000000000
  write_config "$limit"
  start_sidecar
  local pid=$sidecar out=$work/$mode
  # Warm-up: API-key traffic and one good token request (argon2 has run once).
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "http://$PC$path")
  [ "$code" = 200 ] || { echo "API key answered $code, expected 200" >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -d grant_type=client_credentials -u "flood-client:$secret" "http://$PC/oauth/token")
  [ "$code" = 200 ] || { echo "token endpoint answered $code to the good secret, expected 200" >&2; exit 1; }
  probe 3 >/dev/null
  sleep 2
  local idle_rss idle_thr
  idle_rss=$(field "$pid" VmRSS) idle_thr=$(field "$pid" Threads)
  probe "$IDLE_SECS" > "$out.idle"

  : > "$out.rss"
  ( while kill -0 "$pid" 2>/dev/null; do
      echo "$(field "$pid" VmRSS) $(field "$pid" Threads)" >> "$out.rss"; sleep 0.5
    done ) & local sampler=$!; pids+=($sampler)
  wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -s benches/flood_post.lua \
    -H "Authorization: Basic $wrong_basic" "http://$PC/oauth/token" > "$out.flood" 2>&1 &
  local flood=$!; pids+=($flood)
  sleep 1
  probe "$PROBE_SECS" > "$out.probe"
  wait "$flood"
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local hwm; hwm=$(field "$pid" VmHWM)
  sleep "$SETTLE_SECS"
  local after; after=$(field "$pid" VmRSS)
  stop_sidecar

  local statuses rps nonok_probe
  statuses=$(sed -n 's/^statuses //p' "$out.flood")
  rps=$(awk '/Requests\/sec/ {print $2}' "$out.flood")
  nonok_probe=$(awk '/Non-2xx/ {print $NF}' "$out.probe")
  awk -v mode="$mode" -v idle="$idle_rss" -v ithr="$idle_thr" -v hwm="$hwm" -v after="$after" \
      -v ip99="$(pct_of "$out.idle" 99)" -v fp99="$(pct_of "$out.probe" 99)" \
      -v ip50="$(pct_of "$out.idle" 50)" -v fp50="$(pct_of "$out.probe" 50)" -v st="${statuses:-none}" \
      -v rps="$rps" -v bad="${nonok_probe:-0}" -v secs="$SECS" -v conns="$CONNS" -v settle="$SETTLE_SECS" '
    { if ($1 > peak) peak = $1; if ($2 > pthr) pthr = $2 }
    END {
      if (hwm > peak) peak_hwm = hwm; else peak_hwm = peak
      d = (peak_hwm - idle) / 1024; r = fp99 / ip99
      printf "== mode %s: %d connections, wrong secret, %d s ==\n", mode, conns, secs
      printf "  flood answers:      %s (%s req/s)\n", st, rps
      printf "  RSS idle:           %.1f MB (%d threads)\n", idle / 1024, ithr
      printf "  RSS peak:           %.1f MB sampled, %.1f MB VmHWM (%d threads at most)\n", peak / 1024, hwm / 1024, pthr
      printf "  RSS delta:          %.1f MB (target <= 256)  %s\n", d, (d <= 256 ? "PASS" : "FAIL")
      printf "  RSS %d s after:     %.1f MB\n", settle, after / 1024
      printf "  probe p99 idle:     %.3f ms (p50 %.3f)\n", ip99, ip50
      printf "  probe p99 flood:    %.3f ms (p50 %.3f, non-2xx %d)\n", fp99, fp50, bad
      printf "  p99 ratio:          %.2fx (target <= 2x)  %s\n", r, (r <= 2 ? "PASS" : "FAIL")
    }' "$out.rss"
}

echo "flood: wrk -t1 -c$CONNS -d${SECS}s wrong secret + probe wrk -t1 -c4 (idle ${IDLE_SECS}s, flood ${PROBE_SECS}s), loopback, $(nproc) cores, slots ${SLOTS:-default}${FLOOD_SIDECAR_ENV:+, sidecar env $FLOOD_SIDECAR_ENV}, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
for m in $MODES; do run_mode "$m"; done
