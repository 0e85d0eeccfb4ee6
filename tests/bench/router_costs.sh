#!/usr/bin/env bash
# What decision logging and trace export cost the router binary, measured in one run
# against an empty-RPC server in its own process (docs/PERFORMANCE.md, issue 18 items 1
# and 2). Uses the release binaries: cargo build --release -p taskctl -p router-service
#
#   bash tests/bench/router_costs.sh [seconds per run, default 10]
#
# Runs, each with `taskctl bench route` (64 in flight over 4 connections), which measures
# the empty RPC (and its bytes-matched twin) right before the router in the same call:
#   1. short mix, router with decision logging on (the default), stderr through a pipe
#   2. standard mix, same router
#   3. short mix, router with RUST_LOG=warn (no decision lines)
#   4. short mix, router exporting every span (always_on) to an OTLP sink in its own
#      process (tests/bench/otlp_sink.py, needs grpcio), with decision logging on
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
bin=target/release
for b in taskctl router-service; do
  [ -x "$bin/$b" ] || { echo "error: $bin/$b missing: cargo build --release -p taskctl -p router-service" >&2; exit 1; }
done
python3 -c 'import grpc' 2>/dev/null || { echo "error: the OTLP sink needs grpcio: pip install grpcio" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "error: nothing listens on $1" >&2; exit 1; }

out=$(mktemp -d)
base=$(free_port); logging=$(free_port); quiet=$(free_port); traced=$(free_port); sink=$(free_port)
"$bin/taskctl" bench baseline --serve "127.0.0.1:$base" >/dev/null 2>&1 & pids+=($!)
"$bin/router-service" --listen "127.0.0.1:$logging" 2> >(wc -l > "$out/logging.lines") & pids+=($!)
RUST_LOG=warn "$bin/router-service" --listen "127.0.0.1:$quiet" 2>/dev/null & pids+=($!)
python3 tests/bench/otlp_sink.py --listen "127.0.0.1:$sink" > "$out/sink.log" & pids+=($!)
wait_port "$sink"
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink" OTEL_TRACES_SAMPLER=always_on \
  "$bin/router-service" --listen "127.0.0.1:$traced" 2> >(wc -l > "$out/traced.lines") & pids+=($!)
for p in "$base" "$logging" "$quiet" "$traced"; do wait_port "$p"; done

run() { # name port mix
  echo "== $1 ($3 mix)"
  "$bin/taskctl" bench route --router "http://127.0.0.1:$2" --baseline "http://127.0.0.1:$base" \
    --mix "$3" --concurrency 64 --connections 4 --duration "${secs}s" --warmup 2s
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
run "decision logging on" "$logging" short
run "decision logging on" "$logging" standard
run "RUST_LOG=warn" "$quiet" short
run "decision logging on, every span exported" "$traced" short
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
