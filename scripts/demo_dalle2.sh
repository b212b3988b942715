#!/usr/bin/env bash
# DALL-E 2 on the built-in dataset: CLIP, prior, autoencoder, latent decoder, generate, score
# (`make demo-dalle2`). The same
# prompts and held-out pair as scripts/demo.sh, judged by the same shapes judge.
# Usage: [SHAPES=two] scripts/demo_dalle2.sh [PYTHON] [RUN_DIR]
# SHAPES=two trains on the two-shape captions ("a small red circle and a large blue square ...") instead.
set -euo pipefail

# the whole script is one function, read before it runs: editing the file during a run cannot derail it
main() {
  PY=${1:-.venv/bin/python}
  RUN=${2:-runs/demo-dalle2}
  source "$(dirname "$0")/demo_prompts.sh"  # HOLDOUT, PROMPTS and DATA for $SHAPES
  start=$(date +%s)
  rm -rf "$RUN"  # the demo always starts afresh; real runs keep their directories and use --resume
  echo "== 1/5 train_clip.py (built-in shapes, held out: $HOLDOUT)"
  "$PY" train_clip.py --config configs/demo_clip.yaml --holdout "$HOLDOUT" "${DATA[@]}" --output "$RUN/clip"
  # The prior and the autoencoder do not need each other: they train side by side, one thread each (a
  # trainer runs only 1.5-1.7x faster on two threads than on one, so two one-thread trainers finish
  # sooner than the two in turn: 277 s against 324; bench/RESULTS.md, "Ranking deeper, and the prior
  # beside the autoencoder"). The prior writes to prior.log, shown when it ends.
  echo "== 2/5 train_prior.py and 3/5 train_autoencoder.py, side by side (the prior's log: $RUN/prior.log)"
  mkdir -p "$RUN"
  OMP_NUM_THREADS=1 "$PY" train_prior.py --config configs/demo_prior.yaml --holdout "$HOLDOUT" "${DATA[@]}" \
    --clip_path "$RUN/clip" --output "$RUN/prior" > "$RUN/prior.log" 2>&1 &
  prior=$!
  # an autoencoder that fails (or Ctrl-C) stops the prior too
  trap 'kill "$prior" 2> /dev/null || true' EXIT
  trap 'exit 130' INT TERM
  OMP_NUM_THREADS=1 "$PY" train_autoencoder.py --config configs/demo_autoencoder.yaml --holdout "$HOLDOUT" \
    "${DATA[@]}" --output "$RUN/autoencoder"
  if ! wait "$prior"; then
    cat "$RUN/prior.log" >&2
    echo "train_prior.py failed (its log is above and in $RUN/prior.log)" >&2
    exit 1
  fi
  trap - EXIT INT TERM
  echo "-- train_prior.py (from $RUN/prior.log)"
  cat "$RUN/prior.log"
  echo "== 4/5 train_decoder.py (in the autoencoder's latents)"
  "$PY" train_decoder.py --config configs/demo_decoder.yaml --holdout "$HOLDOUT" "${DATA[@]}" --clip_path "$RUN/clip" \
    --autoencoder_path "$RUN/autoencoder" --output "$RUN/decoder"
  echo "== 5/5 generate.py (48 candidates a prompt, the CLIP's best 16 kept)"
  # CLIP ranking at 25 DDIM steps: 2 candidates an image cost what 1 at 50 did and were judged right
  # 79 / 81 % against 66 / 56 % (bench/RESULTS.md, "make demo-dalle2 with CLIP ranking"); 3 an image
  # lift the held-out pair 15 points over 2 on four decoders (64 -> 79 %; trained 92 -> 93 %;
  # bench/ranking_depth.py; RESULTS, "Ranking deeper, and the prior beside the autoencoder")
  "$PY" generate.py --prior_path "$RUN/prior" --decoder_path "$RUN/decoder" --text "$PROMPTS" --num_images 16 \
    --num_candidates 48 --keep 16 --clip_path "$RUN/clip" --batch_size 16 --cf_guidance_scale 3 --steps 25 \
    --prior_steps 64 --amp --seed 0 --outputs_dir "$RUN/outputs"
  echo "== scoring the images with the shapes judge"
  "$PY" -m dalle_dist.evaluation.score_outputs "$RUN/outputs" --holdout "$HOLDOUT" --json "$RUN/scores.json"
  echo "demo finished in $(( $(date +%s) - start )) s (training and generation; installs not included)"
  echo "image grids: $RUN/outputs/*/grid.png"
}
main "$@"
