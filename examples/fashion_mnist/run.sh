#!/usr/bin/env bash
# Fashion-MNIST end to end on a CPU: data -> classifier (judge) -> VAE -> DALL-E -> CLIP -> generate (CLIP-ranked
# and plain) -> class accuracy, CLIP-score, Fréchet distances -> summary. examples/fashion_mnist/README.md.
#
#   sudo apt-get install dataset-fashion-mnist   # the data (Debian / Ubuntu; MIT licence)
#   examples/fashion_mnist/run.sh [RUN_DIR]      # default runs/fashion_mnist; 31 min on a 2-core AMX (bf16) CPU
#   QUICK=1 examples/fashion_mnist/run.sh runs/fm_quick   # a few minutes: tiny steps, for checking the pipeline
#
# Settings come from the environment (defaults sized for a shared 2-core CPU within an hour):
#   PY (.venv/bin/python)  THREADS (1)  TRAIN_LIMIT (all 60000)  TEST_LIMIT (all 10000)  CLS_EPOCHS (3)
#   VAE_STEPS (2000)  DALLE_STEPS (3500)  CLIP_STEPS (1500)  IMAGES (50 kept per prompt)  CANDIDATES (200)
#   VAE_FLAGS (more train_vae.py flags, e.g. "--quantizer vq --num_tokens 1024"; the command line wins)
#   GEN_FLAGS ("--cond_scale 2.5 --top_k 0.9 --temperature 0.7", make demo's)  FASHION_MNIST_DIR
#   MODEL (dalle: VAE -> DALL-E; dalle2: CLIP -> diffusion prior and decoder, the same judge and evaluation)
#   with MODEL=dalle2: PRIOR_STEPS (2000)  AE_STEPS (800)  DECODER_STEPS (1500)  CANDIDATES (100)
#   GEN_FLAGS ("--cf_guidance_scale 3 --steps 50 --prior_steps 64", make demo-dalle2's)
#
# Two chains run side by side, one thread each: VAE -> DALL-E, and classifier -> CLIP (CLIP and the
# classifier need no VAE). One thread per process because the machine is shared: with two threads each
# and another job running, torch's threads wait on each other and a DALL-E step measured 4x slower
# (12-17 vs 60-75 samples/s); set THREADS=2 on an idle machine for the stages that run alone.
set -euo pipefail
set -m  # background jobs in their own process group, so a failure can stop the other chain cleanly

# everything runs inside main(), which bash reads whole before running it: editing this file while a run is
# going does not derail that run
main() {
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
RUN=${1:-runs/fashion_mnist}
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
THREADS=${THREADS:-1}
if [[ ${QUICK:-0} == 1 ]]; then
  : "${TRAIN_LIMIT:=3000}" "${TEST_LIMIT:=1000}" "${CLS_EPOCHS:=1}" "${VAE_STEPS:=150}" "${DALLE_STEPS:=150}"
  : "${CLIP_STEPS:=60}" "${IMAGES:=16}" "${CANDIDATES:=32}" "${PRIOR_STEPS:=60}" "${DECODER_STEPS:=60}"
  : "${AE_STEPS:=60}"
fi
TRAIN_LIMIT=${TRAIN_LIMIT:-}
TEST_LIMIT=${TEST_LIMIT:-}
CLS_EPOCHS=${CLS_EPOCHS:-3}
VAE_STEPS=${VAE_STEPS:-2000}
DALLE_STEPS=${DALLE_STEPS:-3500}
CLIP_STEPS=${CLIP_STEPS:-1500}
IMAGES=${IMAGES:-50}
MODEL=${MODEL:-dalle}
PRIOR_STEPS=${PRIOR_STEPS:-2000}
DECODER_STEPS=${DECODER_STEPS:-1500}
AE_STEPS=${AE_STEPS:-800}
case $MODEL in
  dalle)
    CANDIDATES=${CANDIDATES:-200}
    GEN_FLAGS=${GEN_FLAGS:---cond_scale 2.5 --top_k 0.9 --temperature 0.7}
    ;;
  dalle2)  # a sample costs ~50 UNet passes here: fewer candidates to rank
    CANDIDATES=${CANDIDATES:-100}
    GEN_FLAGS=${GEN_FLAGS:---cf_guidance_scale 3 --steps 50 --prior_steps 64}
    ;;
  *)
    echo "error: MODEL must be dalle or dalle2, got '$MODEL'" >&2
    exit 2
    ;;
esac
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

# the data first: without it, one line and nothing touched
if [[ ! -e $DATA_DIR/train-images-idx3-ubyte.gz && ! -e $DATA_DIR/train-images-idx3-ubyte ]]; then
  echo "error: Fashion-MNIST not found in $DATA_DIR: install it with \`sudo apt-get install dataset-fashion-mnist\` (or set FASHION_MNIST_DIR to a folder with the four idx files)" >&2
  exit 2
fi
# each run starts afresh, but only in a folder this script made (or a new one)
if [[ -e $RUN && ! -e $RUN/.fashion_mnist_run ]] && [[ -n $(ls -A "$RUN" 2>/dev/null) ]]; then
  echo "error: $RUN exists and was not made by this script: choose another RUN_DIR" >&2
  exit 2
fi
rm -rf "$RUN"
mkdir -p "$RUN/logs"
touch "$RUN/.fashion_mnist_run"
echo "$0 $*" > "$RUN/command.txt"
env | grep -E '^(QUICK|THREADS|TRAIN_LIMIT|TEST_LIMIT|CLS_EPOCHS|VAE_STEPS|VAE_FLAGS|DALLE_STEPS|CLIP_STEPS|IMAGES|CANDIDATES|GEN_FLAGS|FASHION_MNIST_DIR|MODEL|PRIOR_STEPS|DECODER_STEPS)=' \
  >> "$RUN/command.txt" || true
printf 'stage\tseconds\tchain\n' > "$RUN/times.tsv"
{
  echo "start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$(getconf _NPROCESSORS_ONLN) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), torch $("$PY" -c 'import torch; print(torch.__version__)'), $THREADS thread(s) per process"
} > "$RUN/machine.txt"
start=$(date +%s)

# stage NAME CHAIN CMD...: run CMD with its output in $RUN/logs/NAME.log (also on the terminal for the
# main chain), and its wall time in $RUN/times.tsv
stage() {
  local name=$1 chain=$2 t0 status=0
  shift 2
  t0=$(date +%s)
  echo "== $name ($(date +%T))"
  if [[ $chain == main ]]; then
    "$@" 2>&1 | tee "$RUN/logs/$name.log" || status=$?
  else
    "$@" > "$RUN/logs/$name.log" 2>&1 || status=$?
  fi
  if (( status != 0 )); then
    echo "error: stage $name failed (exit $status); its log: $RUN/logs/$name.log" >&2
    tail -n 5 "$RUN/logs/$name.log" >&2
    return "$status"
  fi
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$chain" >> "$RUN/times.tsv"
  echo "== $name done in $(( $(date +%s) - t0 )) s"
}

limit_flags() {  # --train_limit / --test_limit when set
  [[ -n $TRAIN_LIMIT ]] && printf -- '--train_limit\n%s\n' "$TRAIN_LIMIT"
  [[ -n $TEST_LIMIT ]] && printf -- '--test_limit\n%s\n' "$TEST_LIMIT"
  true
}
mapfile -t LIMITS < <(limit_flags)
DATA=$RUN/data
WDS=(--wds "png,txt" --image_text_folder "$DATA/shards" --bpe_train_captions 2000 --bpe_vocab_size 512)
COMMON=(--image_size 32 --random_resize_crop_lower_ratio 1.0 --progress lines --seed 0)
read -ra VAE_EXTRA <<< "${VAE_FLAGS:-}"

stage prepare main "$PY" "$HERE/prepare.py" --data_dir "$DATA_DIR" --out "$DATA" "${LIMITS[@]}" \
  --reference_per_class "$IMAGES"

# --amp: bf16 autocast on a CPU with bf16 arithmetic (AVX512-BF16 / AMX: CLIP ~1.4x, DALL-E ~2.3x fp32 measured
# on one), fp32 on CPUs that only emulate bf16 (there bf16 measured 11-46x slower than fp32)
train_clip() {  # CHAIN: a small CLIP, 8 x 8 patches of 4 px, 2 + 2 layers of width 128, --amp
  stage train_clip "$1" "$PY" train_clip.py --output "$RUN/clip" "${WDS[@]}" "${COMMON[@]}" --amp \
    --dim_text 128 --dim_image 128 --dim_latent 128 --text_enc_depth 2 --visual_enc_depth 2 --text_heads 4 \
    --visual_heads 4 --dim_head 32 --text_seq_len 8 --visual_patch_size 4 --batch_size 64 \
    --learning_rate 1e-3 --warmup_steps 50 --lr_schedule cosine --max_steps "$CLIP_STEPS" --log_every 100 \
    --sample_every 100000 --save_every_n_steps 500 --keep_n_checkpoints 1
}
train_autoencoder() {  # CHAIN: make demo-dalle2's autoencoder (32 px -> 16 x 16 x 4 latents), pictures only
  stage train_autoencoder "$1" "$PY" train_autoencoder.py --config configs/demo_autoencoder.yaml \
    --output "$RUN/autoencoder" --wds "png,txt" --image_folder "$DATA/shards" "${COMMON[@]}" \
    --max_steps "$AE_STEPS" --sample_every 100000 --save_every_n_steps 1000 --keep_n_checkpoints 1
}
classifier() {
  stage classifier side "$PY" "$HERE/classifier.py" train --data_dir "$DATA_DIR" --out "$RUN/classifier" \
    --epochs "$CLS_EPOCHS" "${LIMITS[@]}"
}

if [[ $MODEL == dalle ]]; then
  echo "== classifier and train_clip run alongside the VAE and DALL-E (logs: $RUN/logs/)"
  { classifier && train_clip side; } &
  side=$!
  trap 'kill -- -$side 2>/dev/null || true' EXIT
  # 32 px -> an 8 x 8 token grid of 128 codes (make demo's VAE)
  stage train_vae main "$PY" train_vae.py --config configs/demo_vae.yaml --output "$RUN/vae" \
    --image_folder "$DATA/train" "${COMMON[@]}" --max_steps "$VAE_STEPS" --log_every 250 --sample_every 1000 \
    --save_every_n_steps 1000 --keep_n_checkpoints 1 "${VAE_EXTRA[@]}"
  # make demo's DALL-E (dim 256, depth 4, full attention) on 8 text + 64 image tokens, --amp (its config's),
  # caption dropout for classifier-free guidance
  stage train_dalle main "$PY" train_dalle.py --config configs/demo_dalle.yaml --amp \
    --output "$RUN/dalle" --vae_path "$RUN/vae" "${WDS[@]}" "${COMMON[@]}" --text_seq_len 8 \
    --max_steps "$DALLE_STEPS" --log_every 100 --sample_every 1000 --save_every_n_steps 1000 --keep_n_checkpoints 1
  wait "$side"
  trap - EXIT
  MODEL_FLAGS=(--dalle_path "$RUN/dalle")
  # the tokenizer's floor: the reference pictures through the VAE's tokens and back (evaluated below)
  stage reconstruct main "$PY" "$HERE/reconstruct.py" --vae_path "$RUN/vae" --images "$DATA/reference" \
    --out "$RUN/outputs_reconstructed"
else
  echo "== classifier, then the autoencoder, alongside train_clip; then the prior alongside the decoder" \
    "(logs: $RUN/logs/)"
  { classifier && train_autoencoder side; } &
  side=$!
  trap 'kill -- -$side 2>/dev/null || true' EXIT
  train_clip main
  wait "$side"
  # make demo-dalle2's prior and latent decoder (configs/demo_{prior,decoder}.yaml) on this CLIP
  stage train_prior side "$PY" train_prior.py --config configs/demo_prior.yaml --clip_path "$RUN/clip" \
    --output "$RUN/prior" "${WDS[@]}" "${COMMON[@]}" --max_steps "$PRIOR_STEPS" --sample_every 100000 \
    --save_every_n_steps 1000 --keep_n_checkpoints 1 &
  side=$!
  stage train_decoder main "$PY" train_decoder.py --config configs/demo_decoder.yaml --clip_path "$RUN/clip" \
    --autoencoder_path "$RUN/autoencoder" --output "$RUN/decoder" "${WDS[@]}" "${COMMON[@]}" \
    --max_steps "$DECODER_STEPS" --sample_every 100000 --save_every_n_steps 1000 --keep_n_checkpoints 1
  wait "$side"
  trap - EXIT
  MODEL_FLAGS=(--prior_path "$RUN/prior" --decoder_path "$RUN/decoder")
fi

PROMPTS=$(cat "$DATA/prompts.txt")
# CLIP-ranked (the best IMAGES of CANDIDATES per prompt) and plain (the first IMAGES samples), side by side
# shellcheck disable=SC2086  # GEN_FLAGS is a list of flags
stage generate_plain side "$PY" generate.py "${MODEL_FLAGS[@]}" --text "$PROMPTS" --num_images "$IMAGES" \
  --batch_size 50 $GEN_FLAGS --seed 0 --outputs_dir "$RUN/outputs_plain" &
plain=$!
trap 'kill -- -$plain 2>/dev/null || true' EXIT
# shellcheck disable=SC2086
stage generate_ranked main "$PY" generate.py "${MODEL_FLAGS[@]}" --text "$PROMPTS" --num_images "$IMAGES" \
  --num_candidates "$CANDIDATES" --keep "$IMAGES" --clip_path "$RUN/clip" --batch_size 50 $GEN_FLAGS --seed 0 \
  --outputs_dir "$RUN/outputs_ranked"
wait "$plain"
trap - EXIT

for set in ranked plain; do
  stage "judge_$set" main "$PY" "$HERE/classifier.py" judge --model "$RUN/classifier/classifier.pt" \
    --outputs "$RUN/outputs_$set" --json "$RUN/judge_$set.json"
done
# CLIP-score + Fréchet distances (CLIP latents; the classifier's 128 penultimate features) against the
# real test split; the reference set (IMAGES real training images per class) gives the real-image level, its
# reconstructions (DALL-E) the tokenizer's floor
SETS=(ranked plain reference)
[[ $MODEL == dalle ]] && SETS+=(reconstructed)
for set in "${SETS[@]}"; do
  generated=$RUN/outputs_$set
  [[ $set == reference ]] && generated=$DATA/reference
  stage "evaluate_$set" main "$PY" evaluate.py --clip_path "$RUN/clip" --generated "$generated" \
    --real "$DATA/test" --feature_model "$RUN/classifier/features.pt" --feature_image_size 32 \
    --json "$RUN/eval_$set.json"
done
echo "end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RUN/machine.txt"
printf 'total\t%s\t-\n' "$(( $(date +%s) - start ))" >> "$RUN/times.tsv"
"$PY" "$HERE/summarize.py" "$RUN" | tee "$RUN/summary.md"
echo "grids: $RUN/outputs_ranked/*/grid.png; summary: $RUN/summary.md, $RUN/summary.json"
}
main "$@"; exit $?
