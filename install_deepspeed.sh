#!/usr/bin/env bash
# Install DeepSpeed 0.19.8 against the torch already installed in this Python.
# Usage: sh install_deepspeed.sh [PYTHON]   (as DALLE-pytorch's README runs it; bash works too)
#
# With a CUDA build of torch and nvcc the optimizer ops are compiled now (fused Adam, CPU Adam for offload);
# elsewhere only the shared-memory comm op is (the first distributed run would otherwise JIT-compile it,
# ~80 s). --no-build-isolation lets the build see torch (else it records torch "0.0").
# POSIX sh (dash) lacks pipefail: re-run under bash, which every machine this installs on has
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
PYTHON=${1:-python}

if "$PYTHON" -c "import deepspeed" 2>/dev/null; then
  echo "deepspeed already installed"; exit 0
fi
"$PYTHON" -m pip install -q wheel setuptools ninja
# CUDA ops only where they can run: a CUDA build of torch and a CUDA compiler (CPU images may ship nvcc)
if command -v nvcc >/dev/null 2>&1 && "$PYTHON" -c "import sys, torch; sys.exit(not torch.version.cuda)"; then
  if ! DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 DS_BUILD_UTILS=1 \
      "$PYTHON" -m pip install -q --no-build-isolation --no-cache-dir deepspeed==0.19.8; then
    echo "install_deepspeed.sh: building DeepSpeed's CUDA ops failed (see above); installing without" \
         "prebuilt ops: they compile on first use instead" >&2
    DS_BUILD_OPS=0 "$PYTHON" -m pip install -q --no-build-isolation --no-cache-dir deepspeed==0.19.8
  fi
else
  DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 "$PYTHON" -m pip install -q --no-build-isolation deepspeed==0.19.8
fi
"$PYTHON" -c "import deepspeed; print('deepspeed', deepspeed.__version__)"
