#!/usr/bin/env bash
# Celery vs taskrouter's executor on the same kind of work (README.md beside this file):
# N tasks of K zero-latency iterations, each iteration one checkpoint write to Redis.
#
#   1. Celery: for each pool in --celery-pools, a fresh private redis-server (broker and
#      result backend), N tasks enqueued first, then one worker; tasks/s from the first
#      task's start to the last result stored.
#   2. taskrouter: `taskctl bench execute --tasks N --iterations K`, which starts its own
#      fresh private redis-server the same way; tasks/s from the first Submit to the last
#      task acknowledged.
#   3. A table: tasks/s of each, the ratio taskrouter / best Celery, and the versions.
#
# Not part of tests/run.sh. Run it on a quiet machine; on a shared one, under nice.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The worker imports celery_bench.py from here; no __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
repo=$(cd "$here/../../.." && pwd)

tasks=20000
iterations=3
pools="prefork:2 threads:8"
prefetch=4
acks_early=0
executors=1
workers=8
taskctl=${TASKCTL:-$repo/target/release/taskctl}
max_wait=600
keep=0
target_ratio=5

usage() {
  cat <<EOF
usage: $0 [options]
  --tasks N            tasks per run (default $tasks)
  --iterations K       zero-latency iterations per task (default $iterations)
  --celery-pools LIST  Celery worker pools as POOL:CONCURRENCY, space separated
                       (default "$pools"; gevent:N is added when gevent is installed)
  --prefetch N         Celery worker_prefetch_multiplier (default $prefetch, Celery's own)
  --acks-early         Celery acks on receipt (default: late, after the task ran)
  --executors E        taskrouter executor processes (default $executors)
  --workers W          queue workers per executor (default $workers)
  --taskctl PATH       taskctl binary, executor-service next to it
                       (default \$TASKCTL or target/release/taskctl)
  --max-wait SECONDS   give up on a Celery run after this long (default $max_wait)
  --keep               keep the logs directory
Environment: PYTHON (an interpreter with celery and redis; default: python3 if it has
them, else a venv in target/bench-celery/venv with requirements.txt installed).
EOF
}

die() { echo "error: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case $1 in
    --tasks) tasks=${2:?}; shift 2 ;;
    --iterations) iterations=${2:?}; shift 2 ;;
    --celery-pools) pools=${2:?}; pools_given=1; shift 2 ;;
    --prefetch) prefetch=${2:?}; shift 2 ;;
    --acks-early) acks_early=1; shift ;;
    --executors) executors=${2:?}; shift 2 ;;
    --workers) workers=${2:?}; shift 2 ;;
    --taskctl) taskctl=${2:?}; shift 2 ;;
    --max-wait) max_wait=${2:?}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
for v in tasks iterations prefetch executors workers max_wait; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "--${v//_/-} must be a positive integer (got '${!v}')"
done

command -v redis-server >/dev/null || die "redis-server not on PATH (apt-get install redis-server)"
[ -x "$taskctl" ] || die "no taskctl at $taskctl (cargo build --release -p taskctl -p executor-service, or --taskctl PATH)"
[ -x "$(dirname "$taskctl")/executor-service" ] || die "no executor-service next to $taskctl (cargo build --release -p executor-service)"

# --- Python with celery and redis -------------------------------------------------------
has_deps() { "$1" -c 'import celery, redis, kombu.transport.redis' >/dev/null 2>&1; }
venv=$repo/target/bench-celery/venv
if [ -n "${PYTHON:-}" ]; then
  has_deps "$PYTHON" || die "PYTHON=$PYTHON cannot import celery, redis and kombu.transport.redis (pip install -r $here/requirements.txt)"
  py=$PYTHON
elif [ -x "$venv/bin/python" ] && has_deps "$venv/bin/python"; then
  py=$venv/bin/python
elif command -v python3 >/dev/null && has_deps python3; then
  py=python3
else
  command -v python3 >/dev/null || die "python3 not on PATH (Python 3.8 or later is needed)"
  echo "installing Celery into $venv (requirements.txt)" >&2
  python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install -q -r "$here/requirements.txt" || die "pip install -r $here/requirements.txt failed"
  has_deps "$venv/bin/python" || die "celery and redis still not importable in $venv"
  py=$venv/bin/python
fi
if [ -z "${pools_given:-}" ] && "$py" -c 'import gevent' >/dev/null 2>&1; then
  pools="$pools gevent:64"
fi
for p in $pools; do
  [[ $p =~ ^(prefork|threads|gevent|eventlet|solo):[1-9][0-9]*$ ]] || die "--celery-pools: '$p' is not POOL:CONCURRENCY"
done

# --- Private redis-servers, cleaned up on any exit --------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/celery-compare.XXXXXX")
redis_pid=
child_pid=
worker_pid_file=$work/worker.pid
cleanup() {
  local rc=$?
  if [ -n "$child_pid" ]; then
    # SIGINT: the runner then stops its worker, taskctl its executors and redis-server.
    kill -INT "$child_pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$child_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$child_pid" 2>/dev/null || true
    wait "$child_pid" 2>/dev/null || true
  fi
  if [ -s "$worker_pid_file" ]; then
    # The worker runs in its own process group (the runner starts it with a new session).
    kill -KILL -- "-$(cat "$worker_pid_file")" 2>/dev/null || true
  fi
  stop_redis
  if [ "$keep" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
stop_redis() {
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it: bash runs a trap only once the
# foreground command has finished, but interrupts `wait` at once.
run() {
  local rc=0
  "$@" &
  child_pid=$!
  wait "$child_pid" || rc=$?
  child_pid=
  return "$rc"
}

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a redis-server on a free port (never 6379) without persistence; sets redis_port.
start_redis() {
  local name=$1 attempt i
  for attempt in 1 2 3; do
    redis_port=$(free_port)
    [ "$redis_port" != 6379 ] || continue
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize no --dir "$work" >"$work/redis-$name.log" 2>&1 &
    redis_pid=$!
    for i in $(seq 50); do
      if "$py" -c 'import redis, sys; redis.Redis(port=int(sys.argv[1]), socket_timeout=1).ping()' \
        "$redis_port" >/dev/null 2>&1; then
        return 0
      fi
      kill -0 "$redis_pid" 2>/dev/null || break
      sleep 0.1
    done
    stop_redis
  done
  die "redis-server did not start (log: $work/redis-$name.log)"
}

redis_version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
git_rev=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$git_rev" != unknown ] && [ -n "$(git -C "$repo" status --porcelain 2>/dev/null)" ]; then
  git_rev="$git_rev (uncommitted changes)"
fi

echo "Celery vs taskrouter: $tasks tasks x $iterations zero-latency iterations; load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" >&2

# --- Celery ---------------------------------------------------------------------------
celery_results=()
for p in $pools; do
  pool=${p%%:*}
  conc=${p##*:}
  if [ "$pool" = gevent ] || [ "$pool" = eventlet ]; then
    "$py" -c "import $pool" >/dev/null 2>&1 || die "--celery-pools $p: $pool is not installed for $py"
  fi
  echo "celery: $pool x $conc ..." >&2
  start_redis "celery-$pool"
  ack_flag=()
  [ "$acks_early" = 1 ] && ack_flag=(--acks-early)
  out=$work/celery-$pool.json
  : >"$worker_pid_file"
  if ! run "$py" "$here/celery_bench.py" run --redis-url "redis://127.0.0.1:$redis_port" \
    --tasks "$tasks" --iterations "$iterations" --pool "$pool" --concurrency "$conc" \
    --prefetch "$prefetch" --max-wait "$max_wait" "${ack_flag[@]}" \
    --log "$work/celery-worker-$pool.log" --pid-file "$worker_pid_file" >"$out"; then
    die "celery $p failed (worker log: $work/celery-worker-$pool.log)"
  fi
  : >"$worker_pid_file"
  stop_redis
  celery_results+=("$out")
done

# --- taskrouter -----------------------------------------------------------------------
echo "taskrouter: taskctl bench execute ..." >&2
tr_out=$work/taskrouter.json
tr_cmd=("$taskctl" --json bench execute --tasks "$tasks" --iterations "$iterations"
  --executors "$executors" --workers "$workers")
if ! run "${tr_cmd[@]}" >"$tr_out" 2>"$work/taskrouter.err"; then
  cat "$work/taskrouter.err" >&2
  die "taskctl bench execute failed"
fi

# --- Report ---------------------------------------------------------------------------
taskctl_version=$("$taskctl" --version 2>/dev/null || echo "taskctl ?")
"$py" - "$tr_out" "$redis_version" "$git_rev" "$target_ratio" "$taskctl_version" "${celery_results[@]}" <<'EOF'
import json, sys

tr_path, redis_version, git_rev, target, taskctl_version = sys.argv[1:6]
target = float(target)
celery = [json.load(open(p)) for p in sys.argv[6:]]
tr = json.load(open(tr_path))
cfg = tr["config"]
best = max(celery, key=lambda c: c["tasks_per_s"])
ratio = tr["tasks_per_s"] / best["tasks_per_s"]

rows = []
for c in celery:
    rows.append((
        f"Celery {c['pool']} x {c['concurrency']}",
        f"prefetch {c['prefetch_multiplier']}, acks {'late' if c['acks_late'] else 'early'}",
        f"{c['tasks_per_s']:,.1f}",
        f"{c['redis_commands_per_task']:.1f}",
    ))
rows.append((
    f"taskrouter {cfg['executors']} executor(s) x {cfg['workers_per_executor']} workers",
    f"{cfg['submit_concurrency']} Submits in flight, routing {'on' if cfg['with_router'] else 'off'}",
    f"{tr['tasks_per_s']:,.1f}",
    f"{tr['redis']['commands_per_task']:.1f}",
))
head = ("", "settings", "tasks/s", "Redis commands/task")
widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"
print(f"{tr['tasks']['completed']} tasks x {cfg['iterations']} zero-latency iterations, one fresh private redis-server per run\n")
print(line(head))
print("| " + " | ".join("-" * w for w in widths) + " |")
for r in rows:
    print(line(r))
print(f"\ntaskrouter / best Celery ({best['pool']} x {best['concurrency']}): {ratio:.2f}x "
      f"(target >= {target:g}x: {'met' if ratio >= target else 'not met'})")
v = best["versions"]
print(f"versions: celery {v['celery']} (kombu {v['kombu']}, redis-py {v['redis_py']}, "
      f"Python {v['python']}); redis-server {redis_version}; {taskctl_version}, git {git_rev}")
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" >&2
