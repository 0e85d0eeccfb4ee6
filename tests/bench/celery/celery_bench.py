"""Celery side of the Celery comparison (tests/bench/celery/compare.sh).

The Celery app, its one task, and `run`: enqueue N tasks on an idle queue, start one
worker, wait until every result is stored, and print one JSON line with tasks/s.

The task is the Celery counterpart of a taskrouter task of K zero-latency simulated
iterations at its minimum: one HSET per iteration of a checkpoint record into the task's
own hash (K separate round trips, like the executor's one checkpoint round trip per
iteration), then Celery stores the result in its Redis result backend. Broker (db 0),
result backend (db 1) and the checkpoint hashes (db 2) are one redis-server; the
separate databases let the runner count stored results with one DBSIZE per poll.

Usage (compare.sh passes these):
  python3 celery_bench.py run --redis-url redis://127.0.0.1:PORT --tasks 20000 \
      --iterations 3 --pool prefork --concurrency 2
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import celery
import kombu
import redis
from celery import Celery

BROKER_DB = 0
RESULT_DB = 1
CHECKPOINT_DB = 2
TASK_NAME = "bench.iterate"
KEY_PREFIX = "bench:task:"

app = Celery("celery_bench")
REDIS_URL = None
ACKS_LATE = True


def configure(redis_url, acks_late, with_backend):
    """Points the app at one Redis: broker db 0, results db 1 (when with_backend)."""
    global REDIS_URL, ACKS_LATE
    REDIS_URL, ACKS_LATE = redis_url.rstrip("/"), acks_late
    app.conf.update(
        broker_url=f"{REDIS_URL}/{BROKER_DB}",
        result_backend=f"{REDIS_URL}/{RESULT_DB}" if with_backend else None,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Late ack: the message leaves the queue only after the task ran, as a taskrouter
        # queue entry is acknowledged only once its task is final (a worker dying mid-task
        # leaves the task to be picked up again in both).
        task_acks_late=acks_late,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_disable_rate_limits=True,
        # kombu's Redis pool holds 10 connections by default; gevent's greenlets acking
        # at once run out of them ("Too many connections"), the ack is lost, and the
        # message waits for the visibility timeout.
        broker_transport_options={"max_connections": 512},
    )


# The worker (`celery -A celery_bench worker`) imports this module and gets its settings
# from the environment the runner sets. The runner itself (the producer) stores no
# results: with a result backend, every apply_async would also SUBSCRIBE it to the task's
# result channel, which the worker then PUBLISHes to.
if "CELERY_BENCH_REDIS_URL" in os.environ:
    configure(
        os.environ["CELERY_BENCH_REDIS_URL"],
        os.environ.get("CELERY_BENCH_ACKS_LATE", "1") == "1",
        with_backend=True,
    )

_checkpoints = None


def checkpoints():
    """The checkpoint connection, made on first use (so after a prefork child forked)."""
    global _checkpoints
    if _checkpoints is None:
        _checkpoints = redis.Redis.from_url(f"{REDIS_URL}/{CHECKPOINT_DB}")
    return _checkpoints


@app.task(name=TASK_NAME)
def iterate(n, iterations):
    """K iterations of nothing, each checkpointed with one HSET; returns K."""
    r = checkpoints()
    key = f"{KEY_PREFIX}{n}"
    started_us = int(time.time() * 1e6)
    for i in range(1, iterations + 1):
        record = {
            "iteration": i,
            "status": "COMPLETED" if i == iterations else "RUNNING",
            "updated_at_us": int(time.time() * 1e6),
            "checkpoint": json.dumps(
                {"iteration": i, "summary": f"simulated iteration {i}", "changed_paths": []}
            ),
        }
        if i == 1:
            record["started_at_us"] = started_us
        r.hset(key, mapping=record)
    return iterations


def commandstats(client):
    """Calls per command from INFO commandstats."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}


def enqueue(tasks, iterations):
    """Publishes the tasks with ids t0..t{N-1}; returns seconds taken."""
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for n in range(tasks):
            iterate.apply_async(args=(n, iterations), task_id=f"t{n}", producer=producer)
    return time.perf_counter() - t0


def start_worker(args, log):
    """The worker in its own session (process group), so it can be stopped as a whole."""
    env = dict(os.environ)
    env.update(
        CELERY_BENCH_REDIS_URL=REDIS_URL,
        CELERY_BENCH_ACKS_LATE="1" if ACKS_LATE else "0",
        PYTHONPATH=os.pathsep.join(
            p for p in (os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH")) if p
        ),
    )
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_bench", "worker",
        "--pool", args.pool,
        "--concurrency", str(args.concurrency),
        "--prefetch-multiplier", str(args.prefetch),
        "--without-heartbeat", "--without-gossip", "--without-mingle",
        # INFO would log two lines per task; the executor's per-task logs go to a file.
        "--loglevel", "WARNING",
        "--hostname", f"bench-{args.pool}@%h",
    ]
    worker = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{worker.pid}\n")
    return worker


def stop_worker(worker):
    """Warm shutdown, then SIGKILL to the group after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        if worker.poll() is not None:
            break
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            break
        try:
            worker.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    # Prefork children may outlive the main process by a moment; the group goes too.
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_results(results, tasks, worker, max_wait, stall):
    """Polls DBSIZE of the result database until N results are stored; returns polls."""
    polls = 0
    deadline = time.monotonic() + max_wait
    last, last_change = -1, time.monotonic()
    while True:
        polls += 1
        stored = results.dbsize()
        if stored >= tasks:
            return polls
        if stored != last:
            last, last_change = stored, time.monotonic()
        elif stored > 0 and time.monotonic() - last_change > stall:
            raise RuntimeError(
                f"no result stored for {stall:g} s with {stored} of {tasks} done (worker log has why)"
            )
        if worker.poll() is not None:
            raise RuntimeError(
                f"the Celery worker exited ({worker.returncode}) with {stored} of {tasks} results stored"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stored} of {tasks} results stored after {max_wait} s")
        time.sleep(0.05)


def verify(tasks, iterations):
    """Reads every result and checkpoint hash (untimed): (first start, last done, problems)."""
    results = redis.Redis.from_url(f"{REDIS_URL}/{RESULT_DB}")
    cps = redis.Redis.from_url(f"{REDIS_URL}/{CHECKPOINT_DB}")
    first_start, last_done, problems = None, None, []
    chunk = 1000
    for lo in range(0, tasks, chunk):
        ids = range(lo, min(lo + chunk, tasks))
        metas = results.mget([f"celery-task-meta-t{n}" for n in ids])
        pipe = cps.pipeline(transaction=False)
        for n in ids:
            pipe.hmget(f"{KEY_PREFIX}{n}", "iteration", "status", "started_at_us")
        hashes = pipe.execute()
        for n, meta, (it, status, started) in zip(ids, metas, hashes):
            if meta is None:
                problems.append(f"t{n}: no result")
                continue
            meta = json.loads(meta)
            if meta.get("status") != "SUCCESS" or meta.get("result") != iterations:
                problems.append(f"t{n}: {meta.get('status')} {meta.get('result')!r}")
                continue
            if it is None or int(it) != iterations or status != b"COMPLETED" or started is None:
                problems.append(f"t{n}: checkpoint {it!r} {status!r}")
                continue
            done = datetime.fromisoformat(meta["date_done"]).timestamp()
            start = int(started) / 1e6
            first_start = start if first_start is None else min(first_start, start)
            last_done = done if last_done is None else max(last_done, done)
    return first_start, last_done, problems


def run(args):
    server = redis.Redis.from_url(f"{REDIS_URL}/{BROKER_DB}")
    results = redis.Redis.from_url(f"{REDIS_URL}/{RESULT_DB}")
    server.flushall()
    # Counted from before the enqueue: taskrouter's count includes its Submits too.
    server.config_resetstat()
    enqueue_s = enqueue(args.tasks, args.iterations)
    queued = server.llen("celery")
    if queued != args.tasks:
        raise RuntimeError(f"{queued} messages queued, expected {args.tasks}")
    with open(args.log, "ab") as log:
        worker = start_worker(args, log)
        try:
            t_spawn = time.time()
            polls = wait_results(results, args.tasks, worker, args.max_wait, args.stall)
            stats = commandstats(server)
        finally:
            stop_worker(worker)
    first_start, last_done, problems = verify(args.tasks, args.iterations)
    if problems:
        raise RuntimeError(f"{len(problems)} tasks not as expected, first: {problems[0]}")
    window = last_done - first_start
    # This process's own calls: the queue check, the DBSIZE polls and the INFO.
    own = {"llen": 1, "dbsize": polls, "info": 1}
    commands = sum(max(0, calls - own.get(cmd, 0)) for cmd, calls in stats.items())
    print(json.dumps({
        "pool": args.pool,
        "concurrency": args.concurrency,
        "prefetch_multiplier": args.prefetch,
        "acks_late": ACKS_LATE,
        "tasks": args.tasks,
        "iterations": args.iterations,
        "enqueue_s": round(enqueue_s, 3),
        "window_s": round(window, 4),
        "tasks_per_s": round(args.tasks / window, 1),
        "worker_start_to_last_result_s": round(last_done - t_spawn, 3),
        "redis_commands_per_task": round(commands / args.tasks, 2),
        "redis_commands": dict(sorted(stats.items(), key=lambda kv: -kv[1])),
        "versions": {
            "celery": celery.__version__,
            "kombu": kombu.__version__,
            "redis_py": redis.__version__,
            "python": sys.version.split()[0],
        },
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="enqueue, run one worker, print one JSON line")
    r.add_argument("--redis-url", required=True, help="redis://127.0.0.1:PORT (a private server; it is flushed)")
    r.add_argument("--tasks", type=int, default=20000)
    r.add_argument("--iterations", type=int, default=3)
    r.add_argument("--pool", default="prefork", choices=["prefork", "threads", "gevent", "eventlet", "solo"])
    r.add_argument("--concurrency", type=int, default=2)
    r.add_argument("--prefetch", type=int, default=4, help="worker_prefetch_multiplier (Celery's default: 4)")
    r.add_argument("--acks-early", action="store_true", help="ack on receipt instead of after the task ran")
    r.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for every result")
    r.add_argument("--stall", type=float, default=30.0, help="give up when no result is stored for this long")
    r.add_argument("--log", default=os.devnull, help="the worker's output goes here")
    r.add_argument("--pid-file", help="the worker's pid (its process group) is written here")
    args = p.parse_args()
    if args.tasks < 1 or args.iterations < 1 or args.concurrency < 1:
        p.error("--tasks, --iterations and --concurrency must be at least 1")
    configure(args.redis_url, not args.acks_early, with_backend=False)
    # A background job of a script starts with SIGINT ignored; compare.sh stops it with
    # SIGINT, and the worker must be stopped on the way out (the finally in run).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args)
    except KeyboardInterrupt:
        sys.exit(130)
    except (RuntimeError, redis.RedisError) as e:
        print(f"error: celery {args.pool}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
