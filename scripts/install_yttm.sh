#!/usr/bin/env bash
# Install YouTokenToMe (the --bpe_path file.model tokenizer) into this Python.
# Usage: scripts/install_yttm.sh [PYTHON]
#
# youtokentome 1.0.6 ships no wheel; its setup.py needs Cython at build time without declaring it, and its
# sources build only with Cython < 3: so that Cython goes in first and the build runs without isolation.
set -euo pipefail
PYTHON=${1:-python}

if "$PYTHON" -c "import youtokentome" 2>/dev/null; then
  echo "youtokentome already installed"; exit 0
fi
"$PYTHON" -m pip install -q 'cython<3' setuptools wheel
"$PYTHON" -m pip install -q --no-build-isolation youtokentome
"$PYTHON" -c "import youtokentome; print('youtokentome installed')"
