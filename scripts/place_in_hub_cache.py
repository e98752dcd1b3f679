"""Place a model directory in a Hugging Face hub cache under a repository id, so that the id resolves
offline through huggingface_hub exactly as a downloaded model would (the hub itself is not contacted).

    python scripts/place_in_hub_cache.py outputs/offline-e5-small/best kqa-test/e5-small-korquad \
        --cache_dir outputs/hub-cache
    HF_HUB_CACHE=outputs/hub-cache HF_HUB_OFFLINE=1 kqa predict --model kqa-test/e5-small-korquad ...
"""

from __future__ import annotations

import argparse
import sys

from kqa.testing import build_hub_cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a saved model directory (e.g. outputs/kqa/best)")
    parser.add_argument("repo_id", help="the repository id it answers to, e.g. org/name")
    parser.add_argument("--cache_dir", required=True, help="the hub cache folder (HF_HUB_CACHE)")
    parser.add_argument("--revision", default="main")
    args = parser.parse_args(argv)
    snapshot = build_hub_cache(args.cache_dir, args.repo_id, args.model_dir, revision=args.revision)
    print(snapshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
