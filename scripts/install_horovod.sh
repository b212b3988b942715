#!/usr/bin/env bash
# Build Horovod 0.28.1 from source against the torch already installed in this Python (Gloo controller;
# MPI too where Open MPI's compiler wrappers are present). Usage: scripts/install_horovod.sh [PYTHON]
#
# Why the flags: Horovod's CMake pins C++14 but torch 2.x headers need C++17 (scripts/cxx17 appends
# -std=c++17 last, which wins); pip's cmake 4.x refuses the bundled gloo's old policy without
# CMAKE_POLICY_VERSION_MINIMUM; Horovod's build defaults to -j8; --no-build-isolation lets the build see torch.
set -euo pipefail
PYTHON=${1:-python}
HERE=$(cd "$(dirname "$0")" && pwd)

if "$PYTHON" -c "import horovod.torch" 2>/dev/null; then
  echo "horovod already installed"; exit 0
fi
"$PYTHON" -m pip install -q cloudpickle psutil pyyaml packaging cffi wheel setuptools
command -v cmake >/dev/null 2>&1 || "$PYTHON" -m pip install -q cmake

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1
export CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} CXX="$HERE/cxx17"
if command -v mpicxx >/dev/null 2>&1; then
  export HOROVOD_WITH_MPI=1
else
  export HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=gloo
fi
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null \
   && command -v nvcc >/dev/null 2>&1; then
  export HOROVOD_GPU_OPERATIONS=NCCL  # GPU tensors reduced by NCCL
fi
# pip caches the built wheel (keyed by these settings' sdist): later installs take seconds
"$PYTHON" -m pip install -q --no-build-isolation horovod==0.28.1
"$PYTHON" -c "import horovod, horovod.torch as hvd; print('horovod', horovod.__version__, 'gloo', hvd.gloo_built(), 'mpi', hvd.mpi_built())"
