#!/usr/bin/env bash
# The PostgreSQL store at scale: ./benches/postgres.sh [count=100000] [changes=5]
#
# Starts a throwaway PostgreSQL cluster (Debian's postgresql, in a temp dir, on a free
# loopback port), imports COUNT API keys, then reports:
#   (1) import: `portcullis store import` of the generated file;
#   (2) cold load: `portcullis check` on the database (connect, read every row, validate,
#       build the snapshot) and the time `portcullis serve` takes to listen;
#   (3) one change at COUNT credentials: a new key INSERTed by SQL (another writer), and
#       the time until a running replica accepts it — CHANGES times, median and max.
# Loopback only; everything is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-100000}
CHANGES=${2:-5}
cargo build --quiet --release --bin portcullis
BIN=$PWD/target/release/portcullis
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d)
pid=
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
[ "$(id -u)" -eq 0 ] && chown postgres "$work"
pgport=$((20000 + RANDOM % 20000))
as_pg "$PGBIN/initdb" -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$work/pg" -o "-p $pgport -k $work -c listen_addresses=127.0.0.1 -c fsync=off" -l "$work/pg.log" -w start >/dev/null
as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$pgport" -U postgres -qc "CREATE DATABASE portcullis"
psql_do() { as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d portcullis -qAtc "$1"; }

port=$((40000 + RANDOM % 10000))
python3 benches/generate.py "$work" "$COUNT" "$port" postgres "$pgport"
now() { date +%s.%N; }
"$BIN" store migrate --config "$work/portcullis.yaml" >/dev/null
t0=$(now); "$BIN" store import --config "$work/portcullis.yaml" "$work/credentials.yaml" >/dev/null; t1=$(now)
cold=()
for _ in 1 2 3 4 5; do
  c0=$(now); "$BIN" check --config "$work/portcullis.yaml" >/dev/null; c1=$(now)
  cold+=("$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.3f", b - a}')")
done
if [ "${PROFILE:-0}" = 1 ]; then
  perf record -q -g -o "$work/perf.data" "$BIN" check --config "$work/portcullis.yaml" >/dev/null 2>&1 || true
  perf report -i "$work/perf.data" --no-children --percent-limit 2 --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -25
fi
cold_sorted=$(printf '%s\n' "${cold[@]}" | sort -n)
cold_min=$(echo "$cold_sorted" | head -1)
cold_med=$(echo "$cold_sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
s0=$(now)
"$BIN" serve --config "$work/portcullis.yaml" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 400); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.01; done
s1=$(now)
sleep 1
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)

lat=()
for n in $(seq 1 "$CHANGES"); do
  key="bench-new-key-$n-$RANDOM"
  hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
  a=$(now)
  psql_do "INSERT INTO portcullis_credentials (name, kind, hash, permissions, allowed_ips, expires) VALUES ('$key', 'api_key', 'sha256:$hash', '{balances:read}', '{127.0.0.1}', '2099-01-01')"
  for _ in $(seq 1 1000); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $key" "http://127.0.0.1:$port/v1/r0/vaults/v-1/balances")
    [ "$code" != 401 ] && break
    sleep 0.005
  done
  b=$(now)
  lat+=("$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b - a}')")
  sleep 0.3
done
sorted=$(printf '%s\n' "${lat[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
max=$(echo "$sorted" | tail -1)
awk -v n="$COUNT" -v i0="$t0" -v i1="$t1" -v cmin="$cold_min" -v cmed="$cold_med" -v s0="$s0" -v s1="$s1" -v rss="$rss_kb" -v med="$median" -v max="$max" -v k="$CHANGES" 'BEGIN {
  printf "credentials: %s\nimport (validate + one transaction): %.3f s\ncold load (check: connect, read, validate, snapshot): median %.3f s, min %.3f s over 5\nserve until listening: %.3f s (RSS %.1f MB)\none change (SQL INSERT) in force on a running replica: median %.3f s, max %.3f s over %d\n",
    n, i1 - i0, cmed, cmin, s1 - s0, rss / 1024, med, max, k }'
