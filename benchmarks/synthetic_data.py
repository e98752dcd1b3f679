"""Synthetic Korean-like QA data in SQuAD layout, for benchmark runs on a machine without the shared data
(a lent GPU machine gets only the checkout, and nothing can be downloaded there).

Words are strings of common Hangul syllables with a particle; contexts come in the two lengths the
benchmarks need (short, about TyDi's 240 characters; long, about KorQuAD's 2,000-3,000, several 384-token
windows); each question copies words of the sentence that holds its answer, and the answer is a word of
that sentence. Only speed is measured on it: the text has the lengths and the alphabet of the real data,
not its meaning. Deterministic for a seed.

    python benchmarks/synthetic_data.py OUT_DIR       # OUT_DIR/synthetic/synthetic_{train,dev}.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYLLABLES = "가나다라마바사아자차카타파하서울부산대한민국의수도는에서으로를을이가고기도시역사문화학교정부회사"
PARTICLES = ("은", "는", "이", "가", "을", "를", "의", "에", "에서", "으로", "와", "도", "")
SENTENCE_WORDS = (6, 14)
SHORT_SENTENCES = (3, 5)  # about 200-300 characters
LONG_SENTENCES = (36, 52)  # about 2,000-3,000 characters
QUESTION_WORDS = 4
ARTICLES = {"train": 400, "dev": 120}
LONG_SHARE = 0.4  # KorQuAD-like long contexts among the articles; the rest are TyDi-like short ones


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) + rng.choice(PARTICLES)


def sentence(rng: random.Random) -> list[str]:
    return [word(rng) for _ in range(rng.randint(*SENTENCE_WORDS))]


def paragraph(rng: random.Random, index: int, long: bool, split: str) -> dict:
    sentences = [sentence(rng) for _ in range(rng.randint(*(LONG_SENTENCES if long else SHORT_SENTENCES)))]
    context = ""
    qas = []
    for k, words in enumerate(sentences):
        start_of_sentence = len(context)
        context += " ".join(words) + "다. "
        if k % 3 or len(words) <= QUESTION_WORDS:  # a question on every third sentence
            continue
        target = rng.randrange(len(words))
        answer_start = start_of_sentence + sum(len(w) + 1 for w in words[:target])
        asked = [w for i, w in enumerate(words) if i != target][:QUESTION_WORDS]
        qas.append(
            {
                "id": f"{split}-{index}-{k}",
                "question": " ".join(asked) + " 무엇인가?",
                "answers": [{"text": words[target], "answer_start": answer_start}],
            }
        )
    return {"context": context.strip(), "qas": qas}


def squad_json(split: str, articles: int, seed: int) -> dict:
    rng = random.Random(f"{seed}-{split}")
    data = [
        {"title": f"{split} {i}", "paragraphs": [paragraph(rng, i, rng.random() < LONG_SHARE, split)]}
        for i in range(articles)
    ]
    return {"data": data}


def write_synthetic(out_dir: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """OUT_DIR/synthetic/synthetic_train.json and synthetic_dev.json; returns OUT_DIR (a data directory)."""
    folder = Path(out_dir) / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    for split, articles in ARTICLES.items():
        payload = squad_json(split, max(2, round(articles * scale)), seed)
        (folder / f"synthetic_{split}.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="articles relative to the default counts")
    args = parser.parse_args(argv)
    print(write_synthetic(args.out_dir, args.seed, args.scale))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
