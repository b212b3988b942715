#!/bin/sh
# DALLE-pytorch's README installs NVIDIA apex for --amp (apex.amp, opt level O1, through DeepSpeed's "amp"
# section). NVIDIA deprecated apex.amp in favour of PyTorch's native automatic mixed precision, and that is
# what --amp is here: torch.autocast (fp16 with loss scaling on a GPU, bf16 on a CPU with bf16 arithmetic,
# fp32 on other CPUs, which emulate bf16 many times slower; DeepSpeed's torch_autocast section under
# --deepspeed). Nothing in dalle_dist imports apex, so this script installs
# nothing: it checks that the Python it is given can run --amp and says how, then exits 0.
# Usage: sh install_apex.sh [PYTHON]   (POSIX sh; bash works too)
set -u
PYTHON=${1:-python}

echo "install_apex.sh: apex is not needed: --amp is PyTorch's native torch.autocast (apex.amp is deprecated)"
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "install_apex.sh: $PYTHON has no torch yet: run make install (or make install-dev) first" >&2
  exit 1
fi
"$PYTHON" - <<'EOF'
import importlib.util

import torch

if torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
    bf16 = "and bf16 (--bf16)" if torch.cuda.is_bf16_supported() else "(this GPU has no bf16)"
    print(f"--amp on this machine: fp16 autocast with loss scaling on {name}; fp16 (--fp16) {bf16} work too")
else:
    build = f"CUDA {torch.version.cuda} build, no GPU visible" if torch.version.cuda else "CPU build"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
        print(f"--amp on this machine: bf16 autocast on the CPU (torch {torch.__version__}, {build})")
    else:
        print(
            "--amp on this machine: fp32, as this CPU has no bf16 arithmetic (AVX512-BF16 or AMX) and "
            f"emulates it many times slower (torch {torch.__version__}, {build})"
        )
if importlib.util.find_spec("apex") is not None:
    print("apex is installed; dalle_dist does not use it")
EOF
