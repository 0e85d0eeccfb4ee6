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
# redis-cli creates the Redis Cluster of the cluster tests (Debian: redis-tools).
command -v redis-cli >/dev/null || need_root_install redis-tools
command -v redis-cli >/dev/null || { echo "error: redis-cli still not on PATH" >&2; exit 1; }

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

step "tests (last, so its summary closes the log)"
cargo nextest run --workspace --locked --no-fail-fast --profile ci

