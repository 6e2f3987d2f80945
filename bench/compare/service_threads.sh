#!/usr/bin/env bash
# Where a service's telemetry CPU goes, per thread (issue 19): examples/demo-service under the same
# `wrk -t1 -c4` load on /healthz as service_cost.sh, telemetry to a Spindle, and per thread name the
# CPU-seconds per request read from /proc/PID/task/*/stat — request workers (`tokio-rt-worker`) and
# export threads (`spindle-spans`: the span export thread; `spindle-otlp`: the exporters' runtime;
# `OpenTelemetry.T`, the SDK batch span processor, in builds before the crate's own span export;
# thread names are cut at 15 characters).
#
# Usage (from the repository root): bench/compare/service_threads.sh [DEMO_BINARY...]
# (default: $CARGO_TARGET_DIR/release/demo-service); each binary runs once, in the order given.
set -euo pipefail
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
cargo build -q --release -p spindle --bin spindle
T=${CARGO_TARGET_DIR:-target}
(($#)) || { cargo build -q --release -p demo-service; set -- "$T/release/demo-service"; }
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
GRPC=$(port)
printf 'receivers:\n  otlp:\n    grpc: {listen: 127.0.0.1:%s}\n    http: {listen: 127.0.0.1:%s}\nprometheus: {listen: 127.0.0.1:%s}\n' \
  "$GRPC" "$(port)" "$(port)" >"$W/spindle.yaml"
"$T/release/spindle" --config "$W/spindle.yaml" >"$W/spindle.log" 2>&1 &
sleep 1
snap() { for t in /proc/$1/task/*; do echo "$(tr ' ' _ <"$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done |
  awk '{a[$1]+=$2} END{for (k in a) print k, a[k]}' | sort; }
for bin in "$@"; do
  listen=127.0.0.1:$(port)
  env OTEL_SERVICE_NAME=demo OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$GRPC DEMO_LISTEN=$listen RUST_LOG=warn \
    "$bin" >"$W/demo.log" 2>&1 & pid=$!
  sleep 1.5
  wrk -t1 -c4 -d1s "http://$listen/healthz" >/dev/null # warm-up
  snap $pid >"$W/t0"
  out=$(wrk -t1 -c4 -d10s "http://$listen/healthz")
  sleep 1 # the export threads finish their batch
  snap $pid >"$W/t1"
  kill $pid; wait $pid 2>/dev/null || true
  n=$(awk '/requests in/{print $1}' <<<"$out")
  echo "== $bin ($n requests; CPU us per request)"
  join "$W/t0" "$W/t1" | awk -v n="$n" -v hz="$(getconf CLK_TCK)" \
    '{d=($3-$2)/hz; tot+=d; if (d > 0) printf "  %-36s %6.2f\n", $1, d/n*1e6} END{printf "  %-36s %6.2f\n", "total", tot/n*1e6}'
done
