#!/usr/bin/env bash
# Renders every Kustomize overlay under deploy/k8s/overlays into
# target/deploy/<overlay>.yaml and runs checkov on each rendered file and on
# deploy/Dockerfile: any failed check fails the script. Skips must carry a reason
# (checkov.io/skipN: CKV_K8S_xx=reason; `# checkov:skip=ID: reason` in the Dockerfile).
#
# Installs what it needs when missing: kubectl (Debian package) and checkov (pinned, in
# a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/taskrouter). A second run reuses both
# and takes seconds. Runs offline apart from those installs.
set -euo pipefail
cd "$(dirname "$0")/../.."

CHECKOV_VERSION=3.3.30
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/taskrouter"
VENV="$CACHE_DIR/checkov-$CHECKOV_VERSION"
OUT=target/deploy
OVERLAYS_DIR=deploy/k8s/overlays

# checkov: no platform mapping download, no update check, no SCA, no telemetry upload.
export BC_SKIP_MAPPING=TRUE
export CKV_SKIP_PACKAGE_UPDATE_CHECK=true
export CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false
export CHECKOV_ENABLE_SCA_PACKAGE_SCAN=false
unset BC_API_KEY PRISMA_API_URL || true

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_update() {
  [ -n "${APT_UPDATED:-}" ] && return 0
  [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null || return 0
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  APT_UPDATED=1
}

apt_install() {
  [ "$(id -u)" -eq 0 ] || die "$1 is missing and installing it needs root: apt-get install -y $1"
  command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available; install it"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# Whether Debian's package lists offer a package (not just know its name).
apt_has() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'; }

ensure_kubectl() {
  if ! command -v kubectl >/dev/null; then
    say "kubectl not found; installing Debian's kubectl package"
    apt_update
    # Only the `kubectl` package: Debian's older `kubernetes-client` embeds a kustomize too
    # old for these manifests.
    apt_has kubectl && apt_install kubectl
    command -v kubectl >/dev/null ||
      die "kubectl is not installed and no Debian package provides it; install kubectl >= 1.27 (it embeds kustomize v5)"
  fi
  local minor
  minor=$(kubectl version --client -o json 2>/dev/null |
    python3 -c 'import json,sys; print(int("".join(c for c in json.load(sys.stdin)["clientVersion"]["minor"] if c.isdigit())))' 2>/dev/null || echo 0)
  [ "$minor" -ge 27 ] ||
    die "kubectl $(kubectl version --client 2>/dev/null | head -1) is too old; need >= 1.27 (kustomize v5)"
}

checkov_ready() { [ -f "$VENV/.complete" ] && [ -x "$VENV/bin/checkov" ]; }

ensure_checkov() {
  checkov_ready && return 0
  mkdir -p "$CACHE_DIR"
  # Serialises concurrent first runs; the marker file means "fully installed".
  exec 9>"$CACHE_DIR/checkov.lock"
  command -v flock >/dev/null && flock 9
  if ! checkov_ready; then
    say "installing checkov $CHECKOV_VERSION into $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    touch "$VENV/.complete"
  fi
  exec 9>&-
}

command -v python3 >/dev/null || apt_install python3
ensure_kubectl
ensure_checkov

mkdir -p "$OUT"
overlays=()
for dir in "$OVERLAYS_DIR"/*/; do
  [ -f "$dir/kustomization.yaml" ] || continue
  overlays+=("$(basename "$dir")")
done
[ "${#overlays[@]}" -gt 0 ] || die "no overlays under $OVERLAYS_DIR"

# Drop renders of overlays that no longer exist, so nothing reads a stale file.
for f in "$OUT"/*.yaml; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .yaml)
  [ -d "$OVERLAYS_DIR/$name" ] || rm -f "$f"
done

for name in "${overlays[@]}"; do
  kubectl kustomize "$OVERLAYS_DIR/$name" >"$OUT/$name.yaml.tmp" ||
    die "kubectl kustomize $OVERLAYS_DIR/$name failed"
  mv "$OUT/$name.yaml.tmp" "$OUT/$name.yaml"
  say "rendered $OUT/$name.yaml ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
done

# The monitoring kustomization (dashboard ConfigMap, PrometheusRule) must render too; it
# holds no workloads for checkov. Written beside target/deploy, which holds overlays only.
kubectl kustomize deploy/k8s/monitoring >target/deploy-monitoring.yaml ||
  die "kubectl kustomize deploy/k8s/monitoring failed"
grep -q '^kind: PrometheusRule' target/deploy-monitoring.yaml ||
  die "deploy/k8s/monitoring: no PrometheusRule rendered"
say "rendered target/deploy-monitoring.yaml ($(grep -c '^kind:' target/deploy-monitoring.yaml) objects)"

# A skip without a reason is not a justified skip.
for name in "${overlays[@]}"; do
  if grep -E 'checkov\.io/skip[0-9]+:' "$OUT/$name.yaml" | grep -Ev ':[[:space:]]*CKV2?_[A-Z0-9]+_[0-9]+=[^[:space:]]'; then
    die "$OUT/$name.yaml: checkov skip without a reason (use CKV_K8S_xx=reason)"
  fi
done

if grep -E 'checkov:skip=' deploy/Dockerfile | grep -Ev 'checkov:skip=CKV2?_[A-Z0-9]+_[0-9]+:[[:space:]]*[^[:space:]]'; then
  die "deploy/Dockerfile: checkov skip without a reason (use # checkov:skip=CKV_DOCKER_x: reason)"
fi

# Runs checkov on one file; prints its summary line, or the whole report on failure.
status=0
scan() {
  local label=$1 file=$2 framework=$3 report rc summary
  set +e
  report=$("$VENV/bin/checkov" -f "$file" --framework "$framework" --quiet --compact \
    --skip-download --output cli 2>&1)
  rc=$?
  set -e
  summary=$(printf '%s\n' "$report" | grep -E '^Passed checks: ' || true)
  if [ "$rc" -ne 0 ] || [ -z "$summary" ] || ! printf '%s' "$summary" | grep -q 'Failed checks: 0,'; then
    printf '%s\n' "$report" >&2
    say "checkov $label: FAILED${summary:+ ($summary)}" >&2
    status=1
    return 0
  fi
  # A parse failure leaves nothing checked; that must not pass as "0 failed".
  if printf '%s' "$summary" | grep -q '^Passed checks: 0,'; then
    printf '%s\n' "$report" >&2
    say "checkov $label: nothing was checked" >&2
    status=1
    return 0
  fi
  say "checkov $label: $summary"
}

for name in "${overlays[@]}"; do
  scan "$name" "$OUT/$name.yaml" kubernetes
done
scan Dockerfile deploy/Dockerfile dockerfile
exit "$status"
