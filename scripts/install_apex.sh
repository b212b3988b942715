#!/usr/bin/env bash
# NVIDIA apex from source, for users who want its fused kernels. dalle_dist does not need it: --amp is
# PyTorch's native torch.autocast (DeepSpeed's torch_autocast section under --deepspeed).
# Usage: scripts/install_apex.sh [PYTHON]
set -uo pipefail
PYTHON=${1:-python}

fail() {
  echo "install_apex.sh: $1" >&2
  echo "apex is optional: --amp uses PyTorch's native torch.autocast instead" >&2
  exit 1
}
command -v nvcc >/dev/null 2>&1 || fail "no CUDA toolkit (nvcc) on PATH: apex's extensions need one"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
  || fail "the installed torch is a CPU build: install a CUDA build of torch first"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
git clone --depth 1 https://github.com/NVIDIA/apex "$WORK/apex" \
  || fail "could not clone https://github.com/NVIDIA/apex (no network?)"
"$PYTHON" -m pip install -v --no-build-isolation --no-cache-dir \
  --config-settings "--build-option=--cpp_ext" --config-settings "--build-option=--cuda_ext" "$WORK/apex" \
  || fail "building apex failed (see the compiler output above)"
"$PYTHON" -c "import apex; print('apex installed')"
