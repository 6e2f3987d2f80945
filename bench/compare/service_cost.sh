#!/usr/bin/env bash
# What spindle-instrument costs a whole service (issue 19, point 1): examples/demo-service under the
# same `wrk -t1 -c4` load on /healthz, with its telemetry sent to a Spindle and with
# OTEL_SDK_DISABLED=true, alternating runs. Prints per run the CPU-seconds of the service process per
# request (its export threads included) and the spans Spindle received from it against the requests
# served, warm-up included (fewer spans than requests: spans were dropped), then the medians and what
# telemetry adds per request.
#
# Usage (from the repository root): bench/compare/service_cost.sh [--runs N] [--seconds S]
# Needs wrk (Debian package `wrk`). Binaries come from $CARGO_TARGET_DIR (default target/).
# DEMO_ALT: the path of another demo-service binary (e.g. built from an earlier commit) to run as a
# further service, `telemetry-alt`, with telemetry, alternating with the others; the summary then
# gives what each adds.
set -euo pipefail
RUNS=3 SECS=10
while (($#)); do case $1 in
  --runs) RUNS=$2; shift 2;; --seconds) SECS=$2; shift 2;;
  *) echo "unknown argument $1" >&2; exit 2;; esac; done
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
cargo build -q --release -p spindle --bin spindle
cargo build -q --release -p demo-service
T=${CARGO_TARGET_DIR:-target}
SPINDLE=$T/release/spindle DEMO=$T/release/demo-service
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
GRPC=$(port) PROM=$(port)
cat >"$W/spindle.yaml" <<Y
receivers:
  otlp:
    grpc: {listen: 127.0.0.1:$GRPC}
    http: {listen: 127.0.0.1:$(port)}
prometheus: {listen: 127.0.0.1:$PROM}
Y
"$SPINDLE" --config "$W/spindle.yaml" >"$W/spindle.log" 2>&1 &
sleep 1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
spans() { # spans Spindle has received so far
  python3 -c "import re,urllib.request
t=urllib.request.urlopen('http://127.0.0.1:$PROM/metrics').read().decode()
print(int(sum(float(v) for v in re.findall(r'^spindle_received_items_total\{signal=\"traces\",[^}]*\} (\S+)', t, re.M))))"
}
one() { # name, binary, extra env...: start the service, load it, print one JSON line
  local name=$1 bin=$2; shift 2
  local listen; listen=127.0.0.1:$(port)
  env OTEL_SERVICE_NAME=demo OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$GRPC DEMO_LISTEN=$listen \
    RUST_LOG=warn "$@" "$bin" >"$W/$name.log" 2>&1 & local pid=$!
  sleep 1.5
  local s0; s0=$(spans)
  local warm; warm=$(wrk -t1 -c4 -d1s "http://$listen/healthz" | awk '/requests in/{print $1}')
  local c0; c0=$(cpu $pid)
  local out; out=$(wrk -t1 -c4 -d"${SECS}s" "http://$listen/healthz")
  sleep 1 # the export threads finish their batch
  local c1; c1=$(cpu $pid)
  kill $pid; wait $pid 2>/dev/null || true
  sleep 0.5
  local s1; s1=$(spans)
  local reqs; reqs=$(awk '/requests in/{print $1}' <<<"$out")
  python3 -c "import json; c=($c1-$c0)/$(getconf CLK_TCK); n=$reqs
print(json.dumps({'service':'$name','requests':n,'cpu_s':round(c,2),'cpu_us_per_request':round(c/n*1e6,2),'spans_received':$s1-$s0,'requests_with_warm_up':n+$warm}))"
}
for ((r=1; r<=RUNS; r++)); do
  one telemetry "$DEMO" | tee -a "$W/all.jsonl"
  one disabled "$DEMO" OTEL_SDK_DISABLED=true | tee -a "$W/all.jsonl"
  if [[ -n ${DEMO_ALT:-} ]]; then one telemetry-alt "$DEMO_ALT" | tee -a "$W/all.jsonl"; fi
done
python3 - "$W/all.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda s: statistics.median(r['cpu_us_per_request'] for r in rows if r['service'] == s)
t, d = med('telemetry'), med('disabled')
out = {'telemetry_cpu_us_per_request': t, 'disabled_cpu_us_per_request': d, 'added_us': round(t - d, 2)}
if any(r['service'] == 'telemetry-alt' for r in rows):
    a = med('telemetry-alt')
    out.update({'alt_cpu_us_per_request': a, 'alt_added_us': round(a - d, 2)})
print(json.dumps(out))
PY
