#!/usr/bin/env bash
# Trace forwarding side by side: the same OTLP/gRPC load through Rotel and through Spindle, each
# forwarding to one blackhole sink (a Rotel with `--exporter blackhole`), alternating runs, in one run
# of this script. Prints per run and forwarder the spans per CPU-second of the forwarder process
# (= spans/s per core) and its peak RSS, then the medians and the Spindle/Rotel ratios.
#
# Usage (from the repository root):
#   bench/compare/forwarding.sh [--runs N] [--requests N] [--spans N] [--attrs N] [--compression gzip|none] [--disk]
# Defaults: 3 runs, 300 requests of 1000 spans with 8 attributes each, 4 streams, gzip in and out.
# The load with small spans of issue 18: --requests 3000 --spans 100 --attrs 4.
# SPINDLE_EXTRA: YAML appended to Spindle's config (e.g. a compression level, to compare at equal
# levels). --disk adds a third forwarder, Spindle with its disk queue (`storage.path`, fsync before
# each acknowledgement), and prints its throughput per CPU-second against the in-memory Spindle and
# the acknowledgement latencies (p50/p99, send to OK as the load generator sees them) of both.
# SPINDLE_ALT: the path of another spindle binary (e.g. built with `--features jemalloc`) to run as
# a further forwarder, `spindle-alt`, with the same config as `spindle`.
# Rotel comes from its PyPI wheel (`rotel`, which ships the agent binary) into target/peers.
set -euo pipefail
RUNS=3 REQS=300 SPANS=1000 ATTRS=8 COMP=gzip STREAMS=4 DISK=0
while (($#)); do case $1 in
  --runs) RUNS=$2; shift 2;; --requests) REQS=$2; shift 2;; --spans) SPANS=$2; shift 2;;
  --attrs) ATTRS=$2; shift 2;; --compression) COMP=$2; shift 2;; --disk) DISK=1; shift;;
  *) echo "unknown argument $1" >&2; exit 2;; esac; done
cargo build -q --release -p spindle --bin spindle
cargo build -q --release -p spindle-bench --example otlp_load
SPINDLE=target/release/spindle LOAD=target/release/examples/otlp_load
PEERS=target/peers; mkdir -p "$PEERS"
ROTEL=$PEERS/rotel/rotel/rotel-agent
if [[ ! -x $ROTEL ]]; then
  rm -rf "$PEERS/rotel" && mkdir -p "$PEERS/rotel"
  python3 -m pip download -q --no-deps -d "$PEERS/rotel" rotel
  (cd "$PEERS/rotel" && python3 -m zipfile -e rotel-*.whl . && chmod +x rotel/rotel-agent)
fi
echo "rotel: $("$ROTEL" --version 2>/dev/null || echo unknown); spindle: $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)" >&2
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
SINK=$(port)
"$ROTEL" start --otlp-grpc-endpoint 127.0.0.1:$SINK --otlp-http-endpoint 127.0.0.1:$(port) --exporter blackhole >"$W/sink.log" 2>&1 &
sleep 1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
one() { # name, command...: start the forwarder, drive the load, print one JSON line
  local name=$1; shift
  "$@" >"$W/$name.log" 2>&1 & local pid=$!
  sleep 2; local c0; c0=$(cpu $pid)
  local out; out=$("$LOAD" http://127.0.0.1:$IN "$REQS" "$STREAMS" "$SPANS" "$ATTRS" "$COMP")
  sleep 1.5; local c1; c1=$(cpu $pid); local hwm; hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status)
  kill $pid; wait $pid 2>/dev/null || true
  python3 -c "import json,sys; o=json.loads(sys.argv[1]); c=($c1-$c0)/$(getconf CLK_TCK)
print(json.dumps({'forwarder':'$name','spans':o['items'],'errors':o['err'],'overloaded_retries':o['overloaded'],'cpu_s':round(c,2),'spans_per_cpu_s':round(o['items']/c),'spans_per_s':round(o['items']/o['secs']),'peak_rss_mib':round($hwm/1024,1),'ack_p50_ms':o['ack_p50_ms'],'ack_p99_ms':o['ack_p99_ms']}))" "$out"
}
spindle_config() { # file, extra YAML: Spindle listening on $IN, forwarding to the sink
  cat >"$1" <<Y
receivers:
  otlp:
    grpc: {listen: 127.0.0.1:$IN}
    http: {listen: 127.0.0.1:$(port)}
prometheus: {listen: 127.0.0.1:$(port)}
exporters:
  traces:
    otlp: {endpoint: "http://127.0.0.1:$SINK", protocol: grpc, compression: $COMP}
${SPINDLE_EXTRA:-}
$2
Y
}
for ((r=1; r<=RUNS; r++)); do
  IN=$(port)
  one rotel "$ROTEL" start --otlp-grpc-endpoint 127.0.0.1:$IN --otlp-http-endpoint 127.0.0.1:$(port) --exporter otlp \
    --otlp-exporter-endpoint http://127.0.0.1:$SINK --otlp-exporter-compression "$COMP" | tee -a "$W/all.jsonl"
  IN=$(port)
  spindle_config "$W/spindle.yaml" ""
  one spindle "$SPINDLE" --config "$W/spindle.yaml" | tee -a "$W/all.jsonl"
  if [[ -n ${SPINDLE_ALT:-} ]]; then
    IN=$(port)
    spindle_config "$W/spindle-alt.yaml" ""
    one spindle-alt "$SPINDLE_ALT" --config "$W/spindle-alt.yaml" | tee -a "$W/all.jsonl"
  fi
  if ((DISK)); then
    IN=$(port); rm -rf "$W/storage"
    spindle_config "$W/spindle-disk.yaml" "storage: {path: $W/storage}"
    one spindle-disk "$SPINDLE" --config "$W/spindle-disk.yaml" | tee -a "$W/all.jsonl"
  fi
done
python3 - "$W/all.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda f, k: statistics.median(r[k] for r in rows if r['forwarder'] == f)
s, r = med('spindle', 'spans_per_cpu_s'), med('rotel', 'spans_per_cpu_s')
ms, mr = med('spindle', 'peak_rss_mib'), med('rotel', 'peak_rss_mib')
print(json.dumps({'spindle_spans_per_cpu_s': s, 'rotel_spans_per_cpu_s': r, 'cpu_ratio': round(s / r, 2),
                  'spindle_peak_rss_mib': ms, 'rotel_peak_rss_mib': mr, 'rss_ratio': round(ms / mr, 2)}))
if any(r['forwarder'] == 'spindle-alt' for r in rows):
    a = lambda k: med('spindle-alt', k)
    print(json.dumps({'alt_spans_per_cpu_s': a('spans_per_cpu_s'), 'alt_vs_spindle_per_cpu_s': round(a('spans_per_cpu_s') / s, 2),
                      'alt_cpu_ratio_vs_rotel': round(a('spans_per_cpu_s') / r, 2),
                      'alt_peak_rss_mib': a('peak_rss_mib'), 'alt_vs_spindle_rss': round(a('peak_rss_mib') / ms, 2)}))
if any(r['forwarder'] == 'spindle-disk' for r in rows):
    d = lambda k: med('spindle-disk', k)
    m = lambda k: med('spindle', k)
    print(json.dumps({'disk_spans_per_cpu_s': d('spans_per_cpu_s'), 'disk_vs_memory_per_cpu_s': round(d('spans_per_cpu_s') / m('spans_per_cpu_s'), 2),
                      'disk_spans_per_s': d('spans_per_s'), 'disk_vs_memory_per_s': round(d('spans_per_s') / m('spans_per_s'), 2),
                      'memory_ack_p50_ms': m('ack_p50_ms'), 'memory_ack_p99_ms': m('ack_p99_ms'),
                      'disk_ack_p50_ms': d('ack_p50_ms'), 'disk_ack_p99_ms': d('ack_p99_ms'),
                      'disk_peak_rss_mib': d('peak_rss_mib')}))
PY
