#!/usr/bin/env bash
# Supply-chain checks: dependency licenses, banned crates and duplicate versions, and
# crates.io as the only source (policy in deny.toml). Installs cargo-deny when missing.
#
# The advisories check needs the RustSec database, which cargo-deny fetches from GitHub;
# it is off by default because this project's machines cannot reach GitHub. Where it is
# reachable, run it with: TASKROUTER_DENY_ADVISORIES=1 tests/security/deny.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

# 0.20 reads deny.toml as written; a later major may need the file updated.
CARGO_DENY_VERSION="^0.20"

if ! cargo deny --version >/dev/null 2>&1; then
  echo "==> installing cargo-deny (one-time; several minutes on 2 cores)"
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION" >/dev/null
fi

checks=(licenses bans sources)
if [ "${TASKROUTER_DENY_ADVISORIES:-0}" = "1" ]; then
  checks+=(advisories)
else
  echo "note: advisories skipped (set TASKROUTER_DENY_ADVISORIES=1 where GitHub is reachable)"
fi

echo "==> cargo deny check ${checks[*]}"
# Duplicate versions are warnings; any error (license, ban, source) fails the script.
cargo deny --locked check --hide-inclusion-graph "${checks[@]}"
