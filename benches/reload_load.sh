#!/usr/bin/env bash
# Hot reload of a 100,000-credential file under load: ./benches/reload_load.sh [count=100000] [seconds=10] [rounds=3]
#
# On this machine, over loopback only: a fast upstream (examples/fast_upstream.rs) and
# portcullis serving COUNT API keys (benches/generate.py). Each round runs wrk twice with
# the same key (`wrk -t2 -c64`, SECONDS each): once steady, once while the credentials file
# is replaced twice (a key added, written aside and renamed over, as an editor or
# Kubernetes does), so that two full reloads of the file run during the measurement. The
# medians of the rounds' p99 (and requests/s) are printed with the ratio reload ÷ steady,
# and the sidecar's RSS after the last reload. Bounded; everything is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-100000}
SECS=${2:-10}
ROUNDS=${3:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
# PORTCULLIS_BIN runs another build of the sidecar (an older one, to compare).
bin=${PORTCULLIS_BIN:-target/release/portcullis}
cargo build --quiet --release --bin portcullis --example fast_upstream
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
port=$((20000 + RANDOM % 20000))
up=127.0.0.1:$((port + 2))
python3 benches/generate.py "$work" "$COUNT" "$port" file
sed -i "s|^upstream: .*|upstream: \"$up\"|" "$work/portcullis.yaml"
target/release/examples/fast_upstream "$up" 2>/dev/null & pids+=($!)
"$bin" serve --config "$work/portcullis.yaml" >"$work/serve.log" 2>&1 & pid=$!; pids+=($pid)
url="http://127.0.0.1:$port/v1/r0/vaults/v-0/balances"
for _ in $(seq 1 300); do [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: mem-key-0' "$url")" = 200 ] && break; sleep 0.1; done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'x-api-key: mem-key-0' "$url")" = 200 ] || { echo "portcullis does not answer 200" >&2; exit 1; }
sleep 6 # past the reload service's first check

to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else {sub(/s$/,"",v); print v*1000} }'; }
measure() { # name
  local out
  out=$(wrk -t2 -c64 -d"${SECS}s" --latency -H 'x-api-key: mem-key-0' "$url")
  echo "$1 $(echo "$out" | awk '/Requests\/sec/ {print $2}') $(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')") $(echo "$out" | awk '/Non-2xx/ {print $NF}')"
}
replace_file() { # NAME: a new key, the file written aside and renamed over the old one
  local added=$1
  cp "$work/credentials.yaml" "$work/credentials.yaml.new"
  printf '  - name: added-%s\n    key_hash: "sha256:%s"\n    allowed_ips: ["10.0.0.0/8"]\n    permissions: ["balances:read"]\n    expires: 2099-01-01\n' \
    "$added" "$(printf 'added-%s' "$added" | sha256sum | cut -d' ' -f1)" >>"$work/credentials.yaml.new"
  mv "$work/credentials.yaml.new" "$work/credentials.yaml"
}
reloads() { grep -c '"config reloaded"' "$work/serve.log" || true; }

echo "wrk -t2 -c64 -d${SECS}s, $COUNT credentials, loopback, $(nproc) cores, $ROUNDS rounds (median), $(date -u +%Y-%m-%dT%H:%MZ)"
results=()
for round in $(seq 1 "$ROUNDS"); do
  results+=("$(measure steady)")
  before=$(reloads)
  ( sleep 1; replace_file "$round-a"; sleep $((SECS / 2)); replace_file "$round-b" ) &
  writer=$!
  results+=("$(measure reload)")
  wait "$writer"
  sleep 4 # the second reload finishes before the next steady run
  echo "round: $(( $(reloads) - before )) reloads applied" >&2
done
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
printf '%s\n' "${results[@]}" | awk -v rss="$rss_kb" '
  function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { rps[$1] = rps[$1] " " $2; p99[$1] = p99[$1] " " $3; bad[$1] += $4 }
  END {
    printf "%-8s %10s %9s %8s\n", "run", "req/s", "p99 ms", "non-2xx"
    for (n in rps) printf "%-8s %10.0f %9.3f %8d\n", n, median(rps[n]), median(p99[n]), bad[n]
    printf "p99 reload / steady: %.2f\nRSS after the reloads: %.1f MB\n", median(p99["reload"]) / median(p99["steady"]), rss / 1024
  }'
