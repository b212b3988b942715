#!/usr/bin/env bash
# The main job on the built-in dataset: train the VAE, train DALL-E, generate, score. `make demo` runs it.
# Usage: [SHAPES=two] scripts/demo.sh [PYTHON] [RUN_DIR]
# SHAPES=two trains on the two-shape captions ("a small red circle and a large blue square ...") instead.
set -euo pipefail

# the whole script is one function, read before it runs: editing the file during a run cannot derail it
main() {
  PY=${1:-.venv/bin/python}
  RUN=${2:-runs/demo}
  source "$(dirname "$0")/demo_prompts.sh"  # HOLDOUT, PROMPTS and DATA for $SHAPES
  start=$(date +%s)
  rm -rf "$RUN"  # the demo always starts afresh; real runs keep their directories and use --resume
  echo "== 1/3 train_vae.py (built-in shapes, held out: $HOLDOUT)"
  # the configs hold model and training settings, which suit any data; the held-out pair is the built-in data's
  "$PY" train_vae.py --config configs/demo_vae.yaml --holdout "$HOLDOUT" "${DATA[@]}" --output "$RUN/vae"
  echo "== 2/3 train_dalle.py"
  "$PY" train_dalle.py --config configs/demo_dalle.yaml --holdout "$HOLDOUT" "${DATA[@]}" --vae_path "$RUN/vae" \
    --output "$RUN/dalle"
  echo "== 3/3 generate.py"
  "$PY" generate.py --dalle_path "$RUN/dalle" --text "$PROMPTS" --num_images 16 --batch_size 16 \
    --cond_scale 2.5 --top_k 0.9 --temperature 0.7 --seed 0 --outputs_dir "$RUN/outputs"
  echo "== scoring the images with the shapes judge"
  "$PY" -m dalle_dist.evaluation.score_outputs "$RUN/outputs" --holdout "$HOLDOUT" --json "$RUN/scores.json"
  echo "demo finished in $(( $(date +%s) - start )) s (training and generation; installs not included)"
  echo "image grids: $RUN/outputs/*/grid.png"
}
main "$@"
