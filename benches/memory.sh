#!/usr/bin/env bash
# Memory and load time with 100,000 credentials: ./benches/memory.sh [count=100000]
#
# Generates a credentials file with COUNT API keys (and a main config with 10 routes),
# then reports (1) the wall time of `portcullis check` on it (parse + validate + build the
# snapshot) and (2) the resident memory of `portcullis serve` once it listens.
# Loopback only; everything is stopped on exit. PORTCULLIS_BIN runs another build (an older
# one, to compare).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-100000}
cargo build --quiet --release --bin portcullis
bin=${PORTCULLIS_BIN:-target/release/portcullis}
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM
port=$((20000 + RANDOM % 20000))
python3 benches/generate.py "$work" "$COUNT" "$port" file
size=$(du -h "$work/credentials.yaml" | cut -f1)
start=$(date +%s.%N)
"$bin" check --config "$work/portcullis.yaml" >/dev/null
end=$(date +%s.%N)
"$bin" serve --config "$work/portcullis.yaml" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
sleep 0.5
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
# And once the reload service's first check has run (it compares the files with the
# snapshot at start; it once loaded them all again, doubling the memory for seconds).
sleep 4.5
rss5_kb=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
# One scrape of /metrics (the first after start, then the median of three more).
scrape() { curl -s -o /dev/null -w '%{size_download} %{time_total}\n' "http://127.0.0.1:$((port + 1))/metrics"; }
scrape >/dev/null
read -r scrape_bytes scrape_s < <( { scrape; scrape; scrape; } | sort -k2 -n | sed -n 2p)
hwm_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
awk -v n="$COUNT" -v size="$size" -v s="$start" -v e="$end" -v rss="$rss_kb" -v rss5="$rss5_kb" -v hwm="$hwm_kb" -v sb="$scrape_bytes" -v st="$scrape_s" 'BEGIN {
  printf "credentials: %s (file %s)\ncheck (load + validate + snapshot): %.3f s\nserve RSS after start: %.1f MB, 5 s later %.1f MB (peak %.1f MB)\n/metrics scrape (median of 3): %.1f KB in %.1f ms\n", n, size, e - s, rss / 1024, rss5 / 1024, hwm / 1024, sb / 1024, st * 1000 }'
