#!/usr/bin/env bash
# kqa where its users train: one prepared run of every GPU measurement, each part's results as JSON under $OUT.
#
#   OUT=results bash benchmarks/gpu_suite.sh            # a GPU (the device tool: the command as it stands)
#   OUT=/tmp/smoke bash benchmarks/gpu_suite.sh --smoke # every part at tiny shapes on the CPU (CI)
#
# Parts (docs/benchmarks.md, "GPU suite"), each under its own time limit, so that the whole stays under
# 8 minutes on an H100; a part that fails or runs out of time is recorded in the summary and the others run:
#   training          bench_training.py: kqa against transformers.Trainer (dynamic padding, group_by_length)
#   training_compile  the same under torch.compile (kqa's `compile: true`, Trainer's torch_compile)
#   eval              bench_eval_scale.py: ~6,000 windows through BERT-base, post-processing, the metric
#   inference         bench_inference.py: QuestionAnswerer latency, short and long contexts, 1 and 32 questions
#   embedder          bench_embedder.py: kqa index's embedder in passages/s
#   profile           bench_step_profile.py: versions, nvidia-smi, torch.profiler's top kernels of a step
# then summary.json: every part's status and headline numbers against the targets. $OUT receives 8 files at
# most (the device tool brings back no more): the six parts, summary.json and suite.log.
#
# Nothing is downloaded: the models are random-init (BERT-base's shape, a WordPiece vocabulary trained on the
# data). Data: $KQA_DATA_DIR, else ./shared/data, else ../shared/data, else synthetic Korean-like data made
# here (benchmarks/synthetic_data.py). Python packages the machine lacks (datasets on the lent GPU machines)
# are installed from ./.whl/*.whl when that folder exists (docs/benchmarks.md says how to fill it).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0
case "${1:-}" in
--smoke) SMOKE=1 ;;
"") ;;
*) echo "usage: OUT=DIR bash benchmarks/gpu_suite.sh [--smoke]" >&2 && exit 2 ;;
esac
: "${OUT:?set OUT to the folder that receives the results}"
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kqa-gpu-suite.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/suite.log"
: >"$LOG"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_DATASETS_CACHE="$WORK/hf-datasets"

if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$ROOT"/.whl/*.whl \
        >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

if [ -n "${KQA_DATA_DIR:-}" ]; then
    DATA=$KQA_DATA_DIR
elif [ -d "$ROOT/shared/data" ]; then
    DATA=$ROOT/shared/data
elif [ -d "$ROOT/../shared/data" ]; then
    DATA=$ROOT/../shared/data
else
    DATA=$("$PY" "$ROOT/benchmarks/synthetic_data.py" "$WORK/data" 2>>"$LOG") || DATA=""
fi
export KQA_DATA_DIR=$DATA

# Shapes and limits. The GPU run: BERT-base (klue/bert-base's shape, vocabulary 32,000), bf16, windows of
# 384, batches of 128 windows (49,152 tokens a step when full: the tensor cores are busy long before memory
# runs out); the smoke run: one layer of width 32, a few steps. PEAK_TFLOPS: H100 SXM dense bf16 (the H200's
# is the same), the denominator of MFU.
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
BATCH=${BATCH:-128}
if [ "$SMOKE" = 1 ]; then
    TINY=(--vocab-size 300 --hidden-size 32 --layers 1 --heads 2 --intermediate-size 64)
    TRAIN=(--max-train-examples 8 --steps 4 --batch-size 2 --max-seq-length 128 --doc-stride 32 --peak-tflops "$PEAK_TFLOPS"
        "${TINY[@]}")
    COMPILE=(--compile --compile-backend aot_eager --warmup-steps 2) # inductor's C++ build takes minutes on a CPU
    EVAL=(--smoke)
    INFERENCE=(--smoke --backends torch --batch-sizes 1 3)
    EMBEDDER=(--smoke)
    PROFILE=(--smoke)
    LIMITS=(training=60 training_compile=60 eval=40 inference=60 embedder=40 profile=40)
else
    BASE=(--bert-base --bf16 --max-seq-length 384 --peak-tflops "$PEAK_TFLOPS")
    TRAIN=(--steps 40 --batch-size "$BATCH" "${BASE[@]}")
    COMPILE=(--compile --warmup-steps 10)
    EVAL=(--bert-base --bf16 --windows 6000 --batch-size 128)
    INFERENCE=(--backends torch --device cuda --dtype bfloat16 --batch-sizes 1 32 --throughput-questions 64
        --runs 30 --warmup 5 --max-eval-examples 0 --vocab-size 32000 --hidden-size 768 --layers 12 --heads 12
        --intermediate-size 3072)
    EMBEDDER=(--passages 20000)
    PROFILE=(--bert-base --bf16 --batch-size "$BATCH" --peak-tflops "$PEAK_TFLOPS")
    LIMITS=(training=90 training_compile=180 eval=60 inference=60 embedder=40 profile=40)
fi
limit() { for pair in "${LIMITS[@]}"; do [ "${pair%%=*}" = "$1" ] && echo "${pair#*=}"; done; }

# run_part NAME SCRIPT ARGS...: the script under its time limit, its output appended to suite.log, its status
# (exit code, milliseconds, limit) to parts.tsv for the summary.
run_part() {
    local name=$1 script=$2
    shift 2
    local seconds start rc
    seconds=$(limit "$name")
    start=$(date +%s%N)
    echo "=== $name: $script $* (limit ${seconds} s)" | tee -a "$LOG"
    timeout --kill-after=10 "$seconds" "$PY" "$ROOT/benchmarks/$script" "$@" --out "$OUT/$name.json" >>"$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((($(date +%s%N) - start) / 1000000))" "$seconds" >>"$WORK/parts.tsv"
    echo "=== $name: exit $rc" | tee -a "$LOG"
}

if [ -z "$DATA" ]; then
    echo "no data directory and the synthetic data could not be made: see $LOG" | tee -a "$LOG"
else
    run_part training bench_training.py --data-dir "$DATA" --recipes dynamic,grouped,kqa "${TRAIN[@]}"
    run_part training_compile bench_training.py --data-dir "$DATA" --recipes dynamic,kqa "${TRAIN[@]}" "${COMPILE[@]}"
    run_part eval bench_eval_scale.py --data-dir "$DATA" "${EVAL[@]}"
    run_part inference bench_inference.py --data-dir "$DATA" "${INFERENCE[@]}"
    run_part embedder bench_embedder.py --data-dir "$DATA" "${EMBEDDER[@]}"
fi
run_part profile bench_step_profile.py "${PROFILE[@]}"

SMOKE_FLAG=()
[ "$SMOKE" = 1 ] && SMOKE_FLAG=(--smoke)
touch "$WORK/parts.tsv"
"$PY" "$ROOT/benchmarks/gpu_suite_summary.py" --out-dir "$OUT" --parts "$WORK/parts.tsv" --data-dir "${DATA:-none}" \
    --peak-tflops "$PEAK_TFLOPS" "${SMOKE_FLAG[@]}" 2>&1 | tee -a "$LOG"
