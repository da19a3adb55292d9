#!/usr/bin/env bash
# Installs (if missing) the command-line tools the README's tour uses and
# tests/test_docs.py runs: curl and jq, from Debian's packages. Idempotent; needs root
# (as CI and these machines have).
set -euo pipefail
missing=()
for tool in curl jq; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "tools.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v curl jq
