#!/usr/bin/env bash
# Installs (if missing) Debian's Chromium, which the tests use to render Prefect UI
# pages headless, and prints its path. Idempotent; needs root (as CI and these
# machines have).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium.sh: installing chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends chromium >&2
fi
command -v chromium
