#!/usr/bin/env bash
# Instructions per request of one server under callgrind (load-independent, unlike
# req/s on a shared machine). Uses the release binaries.
#
#   bash tests/bench/router_callgrind.sh baseline|default|warn|otlp [seconds, default 5]
#
# The server runs under `valgrind --tool=callgrind` with instrumentation off until the
# load starts (after one second of uncounted load); `taskctl bench route --mix short --concurrency 16 --connections 4` drives
# it with no warm-up, and the script prints Ir / requests the server answered.
# `baseline` is `taskctl bench baseline --serve` (it answers the baseline and the
# bytes-matched baseline calls); `otlp` exports every span to tests/bench/otlp_sink.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=$1; secs=${2:-5}
bin=${BIN:-target/release}
out=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "error: nothing listens on $1" >&2; exit 1; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
port=$(free_port); other=$(free_port)
cg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg.out")
env=()
case $mode in
  baseline) "${cg[@]}" "$bin/taskctl" bench baseline --serve "127.0.0.1:$port" >/dev/null 2>"$out/vg.log" & pids+=($!); vgpid=$!
            "$bin/router-service" --listen "127.0.0.1:$other" 2>/dev/null & pids+=($!)
            router=$other; base=$port ;;
  default|warn|otlp)
            [ "$mode" = warn ] && env+=(RUST_LOG=warn)
            if [ "$mode" = otlp ]; then
              sink=$(free_port)
              python3 tests/bench/otlp_sink.py --listen "127.0.0.1:$sink" >"$out/sink.log" & pids+=($!)
              wait_port "$sink"
              env+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink" OTEL_TRACES_SAMPLER=always_on)
            fi
            env "${env[@]}" "${cg[@]}" "$bin/router-service" --listen "127.0.0.1:$port" 2>"$out/vg.log" & pids+=($!); vgpid=$!
            "$bin/taskctl" bench baseline --serve "127.0.0.1:$other" >/dev/null 2>&1 & pids+=($!)
            router=$port; base=$other ;;
  *) echo "usage: $0 baseline|default|warn|otlp [seconds]" >&2; exit 2 ;;
esac
wait_port "$port"; wait_port "$other"
# A first second of load, not counted: the server finishes starting (reflection, h2
# tables) and the connections are set up before counting starts.
"$bin/taskctl" bench route --router "http://127.0.0.1:$router" --baseline "http://127.0.0.1:$base" \
  --mix short --concurrency 16 --connections 4 --duration 1s --warmup 0s >/dev/null
callgrind_control -i on "$vgpid" >/dev/null
"$bin/taskctl" bench route --router "http://127.0.0.1:$router" --baseline "http://127.0.0.1:$base" \
  --mix short --concurrency 16 --connections 4 --duration "${secs}s" --warmup 0s --json >"$out/bench.json"
callgrind_control -i off "$vgpid" >/dev/null
callgrind_control -d "$vgpid" >/dev/null
sleep 1
python3 - "$mode" "$out" <<'PY'
import json, sys
mode, out = sys.argv[1], sys.argv[2]
bench = json.load(open(f"{out}/bench.json"))
parts = ["baseline", "baseline_bytes"] if mode == "baseline" else ["route"]
requests = sum(bench[p]["requests"] for p in parts)
ir = 0
for line in open(f"{out}/cg.out.1"):
    if line.startswith("totals:"):
        ir = int(line.split()[1])
print(f"{mode}: {ir} instructions over {requests} requests = {ir / max(requests, 1):,.0f} per request")
print(f"profile: {out}/cg.out.1 (callgrind_annotate --inclusive=yes {out}/cg.out.1)")
PY
