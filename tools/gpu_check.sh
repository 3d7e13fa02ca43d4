#!/usr/bin/env bash
# The GPU check: python -m routevit.gpu_check after installing what it can (see docs/gpu.md).
#
#   tools/gpu_check.sh [--out FILE] [--budget-s S] [--sections a,b] [--dry-run] [--device cpu]
#
# Writes one Markdown report (default gpu_check.md; $OUT/gpu_check.md when $OUT is set, as on a
# lent device machine). Installs are best effort and never replace torch: routevit itself
# (editable) or the checkout on PYTHONPATH, timm's light dependencies, and xformers with
# --no-deps (a wheel built for another torch fails to import, which the report states).
# GPU_CHECK_NO_INSTALL=1 skips every install (CI); PYTHON picks the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"

pip_try() {  # pip install, bounded in time, quiet, failure tolerated
  timeout 120 "$PY" -m pip install --quiet --timeout 15 --retries 0 "$@" >/dev/null 2>&1
}

if [ "${GPU_CHECK_NO_INSTALL:-0}" != "1" ]; then
  if ! "$PY" -c "import routevit" >/dev/null 2>&1; then
    pip_try --no-deps -e . || true
  fi
  "$PY" -c "import timm" >/dev/null 2>&1 || pip_try --no-deps timm huggingface_hub safetensors pyyaml || true
  "$PY" -c "import yaml, safetensors, tqdm" >/dev/null 2>&1 || pip_try pyyaml safetensors tqdm || true
  if ! "$PY" -c "import xformers.ops" >/dev/null 2>&1; then
    pip_try --no-deps xformers && echo "gpu_check.sh: installed xformers (--no-deps)" \
      || echo "gpu_check.sh: xformers not installed (no index reachable or no wheel); the report says so"
  fi
fi
# the checkout wins over an installed copy, and works where nothing could be installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

args=("$@")
has_out=0
for a in "$@"; do [ "$a" = "--out" ] && has_out=1; done
if [ "$has_out" = 0 ]; then
  args+=(--out "${OUT:+$OUT/}gpu_check.md")
fi
exec "$PY" -m routevit.gpu_check "${args[@]}"
