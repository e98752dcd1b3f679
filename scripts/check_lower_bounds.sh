#!/usr/bin/env bash
# The lower bounds of pyproject.toml, tested: a fresh virtual environment with the declared minimum of
# each library below (pip `==` pins read from pyproject.toml, so the bounds have one home), torch 2.13.0,
# kqa installed with --no-deps, and the tests that cover saving and loading a model, features, data
# loading, the training loop on a tiny model, inference, models and datasets by hub id, cards and the
# pipeline call. Results: docs/install.md.
#
#   scripts/check_lower_bounds.sh                          # the declared minimums
#   scripts/check_lower_bounds.sh transformers==4.46.3     # one of them replaced (to bisect a bound)
#
# KQA_LOWER_BOUNDS_VENV (default /tmp/kqa-lower-bounds) is recreated on every run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${KQA_LOWER_BOUNDS_VENV:-/tmp/kqa-lower-bounds}"
TESTS=(
    tests/test_modeling.py
    tests/test_features.py
    tests/test_data.py
    tests/test_hub_cache.py
    tests/test_inference.py
    tests/test_loop.py
    tests/test_hub_models.py
    tests/test_data_schemas.py
    tests/test_publish.py
    tests/test_pipeline_api.py
)

# name==minimum for every library named here, from pyproject.toml's `>=` bounds; arguments replace pins.
mapfile -t PINS < <(python3 - "$@" <<'EOF'
import re
import sys
import tomllib

PINNED = ("transformers", "datasets", "accelerate", "huggingface_hub", "safetensors", "tokenizers")
# The extras the tests use (server, ONNX, BM25): newest in their declared range, like the rest below.
EXTRAS = ("serve", "onnx", "retrieval")
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
declared = project["dependencies"] + [line for extra in EXTRAS for line in project["optional-dependencies"][extra]]
pins = {}
for line in declared:
    match = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*(.*)", line)
    name, spec = match.group(1), match.group(3)
    if name in PINNED:
        minimum = re.search(r">=\s*([^,\s]+)", spec).group(1)
        pins[name] = f"{name}=={minimum}"
    elif name != "torch":
        pins[name] = line  # the rest: whatever the resolver picks within the declared range
for override in sys.argv[1:]:
    pins[re.match(r"[A-Za-z0-9_.-]+", override).group(0)] = override
print("\n".join(pins.values()))
EOF
)

[ "${#PINS[@]}" -gt 0 ] || { echo "could not read the bounds of pyproject.toml" >&2; exit 1; }
echo "== pins: ${PINS[*]}"
python3 -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "${PINS[@]}" "pytest>=8"
"$VENV/bin/python" -m pip install -q --no-deps .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|datasets|accelerate|huggingface.hub|safetensors|tokenizers|numpy) '

export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# From outside the checkout, so that the installed kqa is the one imported.
ROOT="$PWD"
cd "$VENV"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" -c "$ROOT/pyproject.toml" \
    "${TESTS[@]/#/$ROOT/}"
