# The demos' prompts and held-out pair (sourced by demo.sh and demo_dalle2.sh): SHAPES=one (default), the
# one-shape captions, or SHAPES=two, two shapes a picture. DATA holds the trainers' data flags.
HOLDOUT="red triangle"
case "${SHAPES:-one}" in
  one)
    PROMPTS="a red circle|a green square|a blue triangle|a yellow circle|a purple square|a cyan triangle|an orange square|a pink circle|a red triangle"
    DATA=(--shapes one)
    ;;
  two)
    # eight trained pairings and one with the held-out pair; every colour and shape appears
    PROMPTS="a red circle and a blue square|a green triangle and a yellow circle|a purple square and an orange triangle|a cyan circle and a pink square|a blue triangle and a green circle|a yellow square and a purple circle|an orange circle and a cyan triangle|a pink triangle and a red square|a red triangle and a blue circle"
    DATA=(--shapes two)  # the longest caption is 13 BPE tokens: text_seq_len 16 holds it
    ;;
  *)
    echo "error: SHAPES must be one or two, got '${SHAPES}'" >&2
    exit 2
    ;;
esac
