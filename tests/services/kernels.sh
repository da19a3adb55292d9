#!/usr/bin/env bash
# Installs (if missing) the non-Python kernels the tests run notebooks in: R's IRkernel
# from Debian's packages (r-cran-irkernel, which installs its kernelspec `ir` in
# /usr/share/jupyter/kernels) and bash_kernel (PyPI, in the dev group of uv.lock),
# whose kernelspec `bash` goes into .venv. Prints the kernel names. Idempotent; the
# apt step needs root (as CI and these machines have).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -f /usr/share/jupyter/kernels/ir/kernel.json ] || ! command -v R >/dev/null 2>&1; then
  echo "kernels.sh: installing r-cran-irkernel" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends r-cran-irkernel >&2
fi
if [ ! -f .venv/share/jupyter/kernels/bash/kernel.json ]; then
  .venv/bin/python -m bash_kernel.install --sys-prefix >&2
fi
echo "bash ir"
