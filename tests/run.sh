#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). Works on a fresh machine:
# installs what the tests need (redis-server), then runs formatting, lint, every test
# and the deployment validation. Tests start their own redis-server on free ports;
# nothing touches a Redis on 6379.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_root_install() {
  local pkg=$1
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: $pkg is missing and installing it needs root: apt-get install -y $pkg" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null; then
    echo "error: $pkg is missing and apt-get is not available; install it and re-run" >&2
    exit 1
  fi
  step "installing $pkg"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
}

command -v redis-server >/dev/null || need_root_install redis-server
command -v redis-server >/dev/null || { echo "error: redis-server still not on PATH" >&2; exit 1; }
# Workspace tests push to bare repositories over file:// with the git command line.
command -v git >/dev/null || need_root_install git
command -v git >/dev/null || { echo "error: git still not on PATH" >&2; exit 1; }
# redis-cli creates the Redis Cluster of the cluster tests (Debian: redis-tools).
command -v redis-cli >/dev/null || need_root_install redis-tools
command -v redis-cli >/dev/null || { echo "error: redis-cli still not on PATH" >&2; exit 1; }
# `taskctl top` is tested on a real terminal (tmux); the dashboard in headless Chromium.
command -v tmux >/dev/null || need_root_install tmux
command -v chromium >/dev/null || need_root_install chromium
command -v chromium >/dev/null || { echo "error: chromium still not on PATH" >&2; exit 1; }

if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries (end-to-end tests run them as child processes)"
cargo build --workspace --bins --locked

if [ -x tests/deploy/validate.sh ]; then
  step "render and validate Kubernetes manifests"
  bash tests/deploy/validate.sh
fi

step "supply chain: licenses, bans, sources (cargo deny)"
bash tests/security/deny.sh

step "doc tests"
cargo test --workspace --doc --locked

step "benchmarks: each runs once in test mode (smoke; numbers are not asserted)"
cargo test --workspace --benches --locked

# Coverage-guided fuzzing (docs/FUZZING.md): every libFuzzer target of tests/fuzz for
# FUZZ_SECONDS each, FUZZ_JOBS at a time, starting from the committed seeds. cargo-fuzz
# passes -Z flags, which RUSTC_BOOTSTRAP=1 allows on the stable toolchain. A crash fails
# the run after the tests, with the input's path; FUZZ_SECONDS=0 skips the step.
# Unoptimised and without AddressSanitizer (safe Rust: panics, hangs and memory blow-ups
# are what it finds): a cold build costs 9 CPU-minutes instead of 24 in release with ASan.
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_JOBS=${FUZZ_JOBS:-$(nproc)}
FUZZ_BUILD=(--dev --sanitizer none --fuzz-dir tests/fuzz)
# The workspace's dev debug level, given here because the fuzz crate is outside the
# workspace (its profile settings do not apply there); only for the fuzz commands.
fuzz_env=(env RUSTC_BOOTSTRAP=1 CARGO_PROFILE_DEV_DEBUG=line-tables-only)
fuzz_crashes=()
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null
  fi
  step "fuzz: build the libFuzzer targets (tests/fuzz)"
  # The fuzz crate is outside the workspace: the workspace's dependency versions (cargo
  # adds libfuzzer-sys to the copy, so it is copied again only when the workspace's changes).
  [ tests/fuzz/Cargo.lock -nt Cargo.lock ] || cp Cargo.lock tests/fuzz/Cargo.lock
  "${fuzz_env[@]}" cargo fuzz build "${FUZZ_BUILD[@]}"
  mapfile -t fuzz_targets < <(cargo fuzz list --fuzz-dir tests/fuzz)
  step "fuzz: ${#fuzz_targets[@]} targets, ${FUZZ_SECONDS}s each, $FUZZ_JOBS at a time"
  fuzz_out=tests/fuzz/target/ci
  mkdir -p "$fuzz_out"
  run_fuzz_target() {
    local target=$1
    # New inputs go to the first directory (ignored by git), the seeds are only read.
    mkdir -p "$fuzz_out/corpus/$target" "tests/fuzz/corpus/$target"
    "${fuzz_env[@]}" cargo fuzz run "$target" "${FUZZ_BUILD[@]}" \
      "$fuzz_out/corpus/$target" "tests/fuzz/corpus/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=1024 -max_len=8192 \
      -print_final_stats=1 >"$fuzz_out/$target.log" 2>&1
  }
  for ((i = 0; i < ${#fuzz_targets[@]}; i += FUZZ_JOBS)); do
    batch=("${fuzz_targets[@]:i:FUZZ_JOBS}")
    pids=()
    for target in "${batch[@]}"; do
      run_fuzz_target "$target" &
      pids+=($!)
    done
    for j in "${!batch[@]}"; do
      target=${batch[$j]}
      log="$fuzz_out/$target.log"
      if wait "${pids[$j]}"; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        printf '%-22s ok: %s inputs, %s/s\n' "$target" "${runs:-?}" "${per_sec:-?}"
      else
        printf '%-22s FAILED (whole output in %s):\n' "$target" "$log"
        grep -m 1 -A 6 -E 'panicked at|ERROR: libFuzzer' "$log" || tail -n 40 "$log"
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        fuzz_crashes+=("$target: ${artifact:-no input saved, see $log}")
      fi
    done
  done
fi

step "tests (last, so its summary closes the log)"
cargo nextest run --workspace --locked --no-fail-fast --profile ci

if [ ${#fuzz_crashes[@]} -gt 0 ]; then
  printf '\nerror: fuzzing found crashes (docs/FUZZING.md says how to replay them):\n' >&2
  printf '  %s\n' "${fuzz_crashes[@]}" >&2
  exit 1
fi

