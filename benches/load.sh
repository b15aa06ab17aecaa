#!/usr/bin/env bash
# Load harness: ./benches/load.sh [seconds=10] [connections=64] [rounds=3]
#
# Environment: LOAD_PROXY_THREADS (default 1): worker threads of both proxies, the plain one
# and portcullis (`threads:`), so that they are compared at the same thread count;
# LOAD_WORK_STEALING (1 or 0; default: the proxies' default, off) sets pingora's work
# stealing for both;
# LOAD_WRK_THREADS (default 2); LOAD_BASE_PORT (default 18000); LOAD_AUDIT=off turns the
# audit log off (RUST_LOG=warn) to measure what it costs; LOAD_PIN=1 runs both proxies on
# CPU 0 and wrk and the upstream on the others (taskset), so that each proxy has one core
# of its own and its requests/s is what that core affords, whatever the scheduler does.
# LOAD_TOGETHER=1 (implies LOAD_PIN=1) instead runs each round's plain proxy and portcullis
# at the same time on the one core, each under its own wrk (half the connections each):
# the core is shared between them, so a slowdown of the machine during the round hits both
# alike, and the ratio of their requests/s is the ratio of their costs per request. It
# prints each round and the median ratios; it says nothing of latency (each proxy waits on
# the other's turns).
#
# On this machine, over loopback only, in one run: a fast upstream
# (examples/fast_upstream.rs), then wrk against
#   1. the upstream directly,
#   2. a plain pingora proxy with no checks (benches/plain_proxy.rs, the ceiling), sent
#      the API-key request and the Bearer request (it forwards the header unread),
#   3. portcullis with an API key,
#   4. portcullis with a Bearer token,
# and prints requests/s, p50/p99 latency and the serving process's CPU time per request
# (user + system, from /proc) for each, with the ratios to the plain proxy on the same
# request. The runs alternate in rounds (plain+key, key, plain+bearer, bearer,
# …) and the median of the rounds is reported, so a drift of the shared machine hits all
# alike.
# Bounded: each run lasts the given seconds; everything is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-64}
PTHREADS=${LOAD_PROXY_THREADS:-1}
WTHREADS=${LOAD_WRK_THREADS:-2}
ROUNDS=${3:-3}
case "${LOAD_WORK_STEALING:-}" in '' | 0 | 1) ;; *) echo "LOAD_WORK_STEALING must be 1 or 0" >&2; exit 2 ;; esac
BASE=${LOAD_BASE_PORT:-18000}
UP=127.0.0.1:$BASE PLAIN=127.0.0.1:$((BASE+1)) PC=127.0.0.1:$((BASE+2)) ADMIN=127.0.0.1:$((BASE+3))

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
# PORTCULLIS_BIN runs another build of the sidecar (an older one, to compare).
bin=${PORTCULLIS_BIN:-target/release/portcullis}
cargo build --quiet --release --bin portcullis --example fast_upstream --example plain_proxy

work=$(mktemp -d)
pids=()
# Waits for the processes before removing their files: a sidecar writes its last-use times
# beside the credentials file as it exits.
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

key="load-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
secret="load-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
target/release/portcullis keygen --out "$work/signing.pem" >/dev/null
cat > "$work/portcullis.yaml" <<YAML
listen: "$PC"
upstream: "$UP"
admin_listen: "$ADMIN"
environment: production
threads: $PTHREADS
$([ -n "${LOAD_WORK_STEALING:-}" ] && { [ "$LOAD_WORK_STEALING" = 0 ] && echo "work_stealing: false" || echo "work_stealing: true"; })
credentials_file: credentials.yaml
tokens:
  issuer: "https://load.test"
  audience: "api"
  signing_key: signing.pem
routes:
  - match: "GET /v1/vaults/{vault_id}/balances"
    require: "balances:read"
YAML
cat > "$work/credentials.yaml" <<YAML
clients:
  - id: load-client
    secret_hash: "sha256:$(hash "$secret")"
    permissions: ["balances:read@vault"]
    allowed_ips: ["127.0.0.1"]
    expires: 2099-01-01
api_keys:
  - name: load-key
    key_hash: "sha256:$(hash "$key")"
    permissions: ["balances:read@vault/v-1"]
    allowed_ips: ["127.0.0.1"]
    expires: 2099-01-01
YAML

proxy_cpu=() load_cpu=()
[ "${LOAD_TOGETHER:-0}" = 1 ] && LOAD_PIN=1
if [ "${LOAD_PIN:-0}" = 1 ]; then
  proxy_cpu=(taskset -c 0) load_cpu=(taskset -c "1-$(($(nproc) - 1))")
fi
"${load_cpu[@]}" target/release/examples/fast_upstream "$UP" 2>/dev/null & pids+=($!); up_pid=$!
PLAIN_WORK_STEALING=${LOAD_WORK_STEALING:-} "${proxy_cpu[@]}" target/release/examples/plain_proxy "$PLAIN" "$UP" "$PTHREADS" >/dev/null 2>&1 & pids+=($!); plain_pid=$!
if [ "${LOAD_AUDIT:-on}" = off ]; then
  RUST_LOG=warn "${proxy_cpu[@]}" "$bin" serve --config "$work/portcullis.yaml" >/dev/null 2>&1 & pids+=($!)
else
  "${proxy_cpu[@]}" "$bin" serve --config "$work/portcullis.yaml" >/dev/null 2>&1 & pids+=($!)
fi
pc_pid=$!
for a in "$UP" "$PLAIN" "$PC"; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://$a/" && break; sleep 0.1; done
done
token=$(curl -s -d grant_type=client_credentials -u "load-client:$secret" "http://$PC/oauth/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$token" ] || { echo "could not get a token" >&2; exit 1; }
path=/v1/vaults/v-1/balances
for h in "x-api-key: $key" "Authorization: Bearer $token"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "$h" "http://$PC$path")
  [ "$code" = 200 ] || { echo "portcullis answered $code, expected 200" >&2; exit 1; }
done

# to_ms VALUE: wrk prints 1.23ms / 850.00us / 1.02s
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else {sub(/s$/,"",v); print v*1000} }'; }
# cpu PID: the process's CPU time so far (user + system, all threads), in clock ticks.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
run() { # name url pid [header]
  local name=$1 url=$2 pid=$3 out c0 c1
  c0=$(cpu "$pid")
  if [ $# -ge 4 ]; then out=$("${load_cpu[@]}" wrk -t"$WTHREADS" -c"$CONNS" -d"${SECS}s" --latency -H "$4" "$url"); else out=$("${load_cpu[@]}" wrk -t"$WTHREADS" -c"$CONNS" -d"${SECS}s" --latency "$url"); fi
  c1=$(cpu "$pid")
  local rps p50 p99 non2xx n
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  # The serving process's CPU per request (µs): what the proxy costs, whatever else the
  # shared machine does at the time.
  echo "$name $rps $p50 $p99 ${non2xx:-0} $(awk -v d=$((c1 - c0)) -v t="$TICK" -v n="$n" 'BEGIN{printf "%.2f", d / t * 1e6 / n}')"
}
# MEDIAN: an awk function, the median of a space-separated list of numbers.
MEDIAN='
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }'
if [ "${LOAD_TOGETHER:-0}" = 1 ]; then
  # together HEADER: one round, both proxies at once; prints plain's and portcullis's req/s
  # and CPU µs per request.
  together() {
    local pa pb ca0 cb0 ca1 cb1
    ca0=$(cpu "$plain_pid") cb0=$(cpu "$pc_pid")
    "${load_cpu[@]}" wrk -t1 -c$((CONNS / 2)) -d"${SECS}s" -H "$1" "http://$PLAIN$path" > "$work/a" & pa=$!
    "${load_cpu[@]}" wrk -t1 -c$((CONNS / 2)) -d"${SECS}s" -H "$1" "http://$PC$path" > "$work/b" & pb=$!
    wait "$pa" "$pb"
    ca1=$(cpu "$plain_pid") cb1=$(cpu "$pc_pid")
    awk -v t="$TICK" -v da=$((ca1 - ca0)) -v db=$((cb1 - cb0)) '
      FNR == 1 { f++ } /Requests\/sec/ { r[f] = $2 } /requests in/ { n[f] = $1 } /Non-2xx/ { bad[f] = $NF }
      END { printf "%.0f %.0f %.2f %.2f %d\n", r[1], r[2], da / t * 1e6 / n[1], db / t * 1e6 / n[2], bad[1] + bad[2] }' "$work/a" "$work/b"
  }
  echo "side by side on one core: wrk -t1 -c$((CONNS / 2)) -d${SECS}s against each proxy at once, proxy threads $PTHREADS, audit ${LOAD_AUDIT:-on}, loopback, $(nproc) cores, $ROUNDS rounds (median), $(date -u +%Y-%m-%dT%H:%MZ)"
  printf '%-12s %5s %12s %12s %10s %12s %12s %10s\n' mode round "plain req/s" "pc req/s" rps/plain "plain us/req" "pc us/req" cpu/plain
  for mode in api_key bearer; do
    if [ "$mode" = api_key ]; then h="x-api-key: $key"; else h="Authorization: Bearer $token"; fi
    for r in $(seq 1 "$ROUNDS"); do
      read -r ra rb ca cb bad < <(together "$h")
      [ "$bad" = 0 ] || { echo "non-2xx answers in a round: $bad" >&2; exit 1; }
      printf '%-12s %5d %12.0f %12.0f %10.3f %12.2f %12.2f %10.3f\n' "$mode" "$r" "$ra" "$rb" "$(awk -v a="$ra" -v b="$rb" 'BEGIN{print b / a}')" "$ca" "$cb" "$(awk -v a="$ca" -v b="$cb" 'BEGIN{print b / a}')"
    done
  done | tee "$work/rounds"
  awk "$MEDIAN"'
    $1 != "mode" { rps[$1] = rps[$1] " " $5; cpu[$1] = cpu[$1] " " $8 }
    END { for (m in rps) printf "median %-12s rps/plain %.3f  cpu/plain %.3f\n", m, median(rps[m]), median(cpu[m]) }' "$work/rounds" | sort
  exit 0
fi
echo "wrk -t$WTHREADS -c$CONNS -d${SECS}s, proxy threads $PTHREADS, audit ${LOAD_AUDIT:-on}, pinned ${LOAD_PIN:-0}, loopback, $(nproc) cores, $ROUNDS rounds (median), $(date -u +%Y-%m-%dT%H:%MZ)"
# The plain proxy gets the same request as portcullis in each mode (it forwards the header
# it does not read), so each ratio is the cost of the checks on the same bytes.
results=()
results+=("$(run upstream "http://$UP$path" "$up_pid")")
for _ in $(seq 1 "$ROUNDS"); do
  results+=("$(run plain_proxy_key_hdr "http://$PLAIN$path" "$plain_pid" "x-api-key: $key")")
  results+=("$(run portcullis_api_key "http://$PC$path" "$pc_pid" "x-api-key: $key")")
  results+=("$(run plain_proxy_bearer_hdr "http://$PLAIN$path" "$plain_pid" "Authorization: Bearer $token")")
  results+=("$(run portcullis_bearer "http://$PC$path" "$pc_pid" "Authorization: Bearer $token")")
done
[ -n "${LOAD_RAW:-}" ] && printf "%s\n" "${results[@]}" >&2
printf '%s\n' "${results[@]}" | awk "$MEDIAN"'
  { if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 }
    rps[$1] = rps[$1] " " $2; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; bad[$1] += $5; cpu[$1] = cpu[$1] " " $6 }
  END {
    # Each portcullis mode against the plain proxy given the same header; the rest against
    # the plain proxy with the API key header.
    base["portcullis_bearer"] = "plain_proxy_bearer_hdr"; base["plain_proxy_bearer_hdr"] = "plain_proxy_bearer_hdr"
    printf "%-24s %12s %9s %9s %8s %10s %10s %10s %10s\n", "target", "req/s", "p50 ms", "p99 ms", "non-2xx", "rps/plain", "p99/plain", "cpu us/req", "cpu/plain"
    for (i = 1; i <= k; i++) { n = order[i]; b = (n in base) ? base[n] : "plain_proxy_key_hdr"
      printf "%-24s %12.0f %9.3f %9.3f %8d %10.3f %10.3f %10.2f %10.3f\n", n, median(rps[n]), median(p50[n]), median(p99[n]), bad[n], median(rps[n]) / median(rps[b]), median(p99[n]) / median(p99[b]), median(cpu[n]), median(cpu[n]) / median(cpu[b]) }
  }'
