#!/usr/bin/env bash
# A venv in which one process imports both dalle_dist and DALLE-pytorch 1.6.6, for
# bench/compare_dalle_pytorch.py. Idempotent: a stamp file records the package list it installed.
#
#     bash bench/setup_dalle_pytorch.sh && bench/.venv-dalle-pytorch/bin/python bench/compare_dalle_pytorch.py
#
# torch is installed first with the exact CPU spec; every other package is installed with --no-deps so
# that nothing can pull a different (CUDA) torch build or torchvision. What DALLE-pytorch's import needs:
#   einops, axial-positional-embedding, rotary-embedding-torch  (model code; versions of its time, 2023:
#       rotary-embedding-torch 0.2.3 still has `broadcat` and the `apply_rotary_emb(freqs, t)` it calls)
#   setuptools<81     dalle_pytorch/__init__.py imports pkg_resources
#   numpy, pillow, pyyaml, tqdm, packaging, requests (+ urllib3 idna certifi charset-normalizer)
#                     imported at module level by dalle_pytorch.dalle_pytorch / dalle_pytorch.vae
#   omegaconf (+ antlr4-python3-runtime 4.9.3)   imported at module level by dalle_pytorch.vae
#   taming-transformers-rom1504   its `taming.models.vqgan` imports torchvision and pytorch_lightning,
#                     which cannot load beside CPU torch here: the harness stubs that one module in
#                     sys.modules before importing dalle_pytorch (VQGanVAE is not benchmarked).
# Not installed: youtokentome, ftfy, regex, transformers, torchvision, DALL-E (OpenAI's VAE) - only
# dalle_pytorch.tokenizer / loader / OpenAIDiscreteVAE use them and `import dalle_pytorch` does not.
# dalle_dist (editable, --no-deps) and its runtime deps: numpy pillow safetensors tqdm pyyaml tokenizers
# webdataset braceexpand (setup.py install_requires; versions as in the project's .venv), and
# vector-quantize-pytorch with its own (einx frozendict loguru torch-einops-utils; sympy comes with torch)
# for the vq / fsq / lfq rows of the VAE section.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/bench/.venv-dalle-pytorch"
PY="$VENV/bin/python"
STAMP="$VENV/.installed"

TORCH_SPEC="torch==2.13.0"
PACKAGES=(
    "dalle-pytorch==1.6.6"
    "einops==0.8.2"
    "axial-positional-embedding==0.2.1"
    "rotary-embedding-torch==0.2.3"
    "taming-transformers-rom1504==0.0.6"
    "setuptools<81"
    "numpy==2.4.6"
    "pillow==13.0.0"
    "pyyaml==6.0.3"
    "tqdm==4.70.1"
    "packaging==26.3"
    "requests==2.34.2"
    "urllib3==2.8.0"
    "idna==3.20"
    "certifi"
    "charset-normalizer==3.5.2"
    "omegaconf==2.3.0"
    "antlr4-python3-runtime==4.9.3"
    "safetensors==0.8.0"
    "tokenizers==0.23.3"
    "webdataset==1.0.2"
    "braceexpand==0.1.7"
    "vector-quantize-pytorch==1.32.0"
    "einx==0.4.3"
    "frozendict==2.5.1"
    "loguru==0.7.3"
    "torch-einops-utils==0.2.0"
)
WANT="$TORCH_SPEC ${PACKAGES[*]} dalle_dist-editable v1"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "import torch" 2>/dev/null; then
    exit 0
fi

[[ -x "$PY" ]] || python3.11 -m venv "$VENV"
pipi() {  # pip install, without the local mirror config's "Location ... is ignored" noise
    "$PY" -m pip install -q --disable-pip-version-check "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

"$PY" -c "import torch" 2>/dev/null || pipi "$TORCH_SPEC"
# setuptools first: the sdists below (axial-positional-embedding) build without isolation against it
pipi --no-deps "setuptools<81" wheel
pipi --no-deps --no-build-isolation "${PACKAGES[@]}"
pipi --no-deps --no-build-isolation -e "$ROOT"

version="$("$PY" -c "import torch; print(torch.__version__)")"
if [[ "$version" != "2.13.0" && "$version" != "2.13.0+cpu" ]]; then
    echo "setup_dalle_pytorch.sh: torch is $version in $VENV, expected 2.13.0 (+cpu)" >&2
    exit 1
fi
"$PY" - <<'EOF'
import sys, types
# the same stub the harness installs: taming's VQGAN module imports torchvision
stub = types.ModuleType("taming.models.vqgan")
stub.VQModel = stub.GumbelVQ = None
sys.modules["taming.models.vqgan"] = stub
import dalle_pytorch, dalle_dist.models  # noqa: E401
print("dalle_pytorch", dalle_pytorch.__version__, "and dalle_dist import")
EOF
echo "$WANT" >"$STAMP"
