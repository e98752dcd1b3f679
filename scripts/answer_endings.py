"""How gold answers end, in Kiwi's tags: the training-data evidence for `kqa.boundaries`' tag lists.

    python scripts/answer_endings.py [--data_dir ../shared/data] [--out endings.json]

Reads the train files only (KorQuAD 1.0 sample and TyDi QA GoldP Korean; never the dev sets), analyses
every context once with Kiwi and, for every gold answer, counts

- `ends`: the tag of the gold answer's last morpheme, when that morpheme is glued to the one before it
  inside the answer (a suffix of the answer's last word: 1446 + 년, 세종대왕 + 이);
- `follows`: the tag of the morpheme glued right after the gold answer (no space: 1446년 + 에).

A tag is trimmed (`learned_trim_tags`) when gold answers stop before it at least `--ratio` times as
often as they end with it, and stop before it at least `--min_count` times. Then the tag of the gold
answer's last morpheme when a learned trim tag follows is counted (the words particles attach to): a
tag seen at least `--min_count` times there, and not trimmed itself, is a host (`HOST_TAGS`). Gold
answers that begin inside a word are counted too (`starts`: their first tag). Last, the rule of
`kqa.boundaries` (its tag lists as they are) is applied to the gold spans themselves (each change would
turn a right answer wrong) and to each gold span extended by the glued trimmable morphemes after it
(each one brought back is a wrong answer made right).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kqa.boundaries import HOST_TAGS, TRIM_TAGS, analyse, trim_end, trim_start  # noqa: E402
from kqa.squad import squad_questions  # noqa: E402
from kqa.text import read_utf8_text  # noqa: E402

TRAIN_FILES = ("korquad-1.0-sample/KorQuAD_v1.0_train.json", "tydiqa-goldp-ko/korean_tydiqa_train.json")


def gold_spans(data_dir: Path) -> list[tuple[str, int, int]]:
    """(context, start, end) of every gold answer of the train files, repeated answers once."""
    found: dict[tuple[str, int, int], None] = {}
    for name in TRAIN_FILES:
        document = json.loads(read_utf8_text(data_dir / name))
        for record in squad_questions(document, name):
            context = record.paragraph["context"]
            for answer in record.qa.get("answers", []):
                start, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
                if context[start:end] != answer["text"]:  # a misplaced answer would teach wrong edges
                    raise ValueError(f"{name}: {record.path}: answer {answer['text']!r} is not at {start}")
                found[context, start, end] = None
    return list(found)


def _glued(context: str, position: int) -> bool:
    """No space at `position`: the morphemes on both sides of it belong to one word."""
    return 0 < position < len(context) and not context[position - 1].isspace() and not context[position].isspace()


def count(spans, morphemes) -> dict:
    ends, follows, starts, precedes = Counter(), Counter(), Counter(), Counter()
    for (context, s, e), m in zip(spans, morphemes):
        last = [j for j in range(len(m.tags)) if m.end[j] == e and m.start[j] >= s]
        if last and any(m.end[k] == m.start[last[-1]] and m.start[k] >= s for k in range(len(m.tags))):
            ends[m.tags[last[-1]]] += 1
        after = m.tag_starting_at(e)
        if after is not None and _glued(context, e):
            follows[after] += 1
        first, before = m.tag_starting_at(s), m.tag_ending_at(s)
        if first is not None and before is not None and _glued(context, s):
            starts[first] += 1  # the gold answer begins inside a word, with this tag
            precedes[before] += 1
    return {"ends": ends, "follows": follows, "starts": starts, "precedes": precedes}


def hosts(spans, morphemes, trim_tags) -> Counter:
    """The tag of the gold answer's last morpheme when a morpheme of `trim_tags` is glued after it."""
    found = Counter()
    for (context, _, e), m in zip(spans, morphemes):
        if m.tag_starting_at(e) in trim_tags and _glued(context, e):
            found[m.tag_ending_at(e) or "(inside a morpheme)"] += 1
    return found


def extended_end(m, context: str, e: int) -> int:
    """The end of the glued run of trimmable morphemes right after `e` (e itself when there is none)."""
    cut = e
    for j in range(len(m.tags)):
        if m.start[j] <= cut < m.end[j] or (m.start[j] == cut and m.end[j] > cut):
            if m.tags[j] not in TRIM_TAGS:
                break
            cut = int(m.end[j])
    return cut


def simulate(spans, morphemes) -> dict:
    """The rule on gold spans (changed: right → wrong) and on gold + glued particles (restored)."""
    changed, extended, restored = [], 0, 0
    for (context, s, e), m in zip(spans, morphemes):
        new_e = trim_end(m, s, e)
        new_s = trim_start(m, context, s, new_e)
        if (new_s, new_e) != (s, e):
            changed.append(f"{context[s:e]} → {context[new_s:new_e]}")
        longer = extended_end(m, context, e)
        if longer > e:
            extended += 1
            restored += trim_end(m, s, longer) == e
    return {"gold": len(spans), "changed": changed, "extended": extended, "restored": restored}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--ratio", type=float, default=10.0)
    parser.add_argument("--min_count", type=int, default=5)
    parser.add_argument("--out", help="write the counts as JSON here")
    args = parser.parse_args(argv)

    spans = gold_spans(Path(args.data_dir))
    contexts = list(dict.fromkeys(c for c, _, _ in spans))
    analysed = dict(zip(contexts, analyse(contexts)))
    morphemes = [analysed[c] for c, _, _ in spans]
    counts = count(spans, morphemes)
    ends, follows, starts = counts["ends"], counts["follows"], counts["starts"]
    learned = sorted(t for t in follows if follows[t] >= args.min_count and follows[t] >= args.ratio * ends[t])
    host_counts = hosts(spans, morphemes, set(learned))
    learned_hosts = sorted(t for t, n in host_counts.items() if n >= args.min_count and t not in learned)

    print(f"{len(spans)} gold answers in {len(contexts)} contexts ({', '.join(TRAIN_FILES)})\n")
    print("| tag | gold answers end with it | stop before it | begin with it, inside a word | in TRIM_TAGS |")
    print("|---|---|---|---|---|")
    for tag in sorted(set(ends) | set(follows), key=lambda t: -(ends[t] + follows[t])):
        print(f"| {tag} | {ends[tag]} | {follows[tag]} | {starts[tag]} | {'yes' if tag in TRIM_TAGS else ''} |")
    rule = f"stop before >= {args.min_count} and >= {args.ratio:g} x end with"
    print(f"\nlearned trim tags ({rule}): {' '.join(learned)}")
    print(f"kqa.boundaries.TRIM_TAGS: {' '.join(sorted(TRIM_TAGS))}")
    print("\nthe gold answer's last morpheme when a learned trim tag is glued after it:")
    print("  " + ", ".join(f"{tag} {n}{' (host)' if tag in HOST_TAGS else ''}" for tag, n in host_counts.most_common()))
    print(f"learned hosts (>= {args.min_count}, not trimmed themselves): {' '.join(learned_hosts)}")
    print(f"kqa.boundaries.HOST_TAGS: {' '.join(sorted(HOST_TAGS))}")
    print(f"\ngold answers that begin inside a word: {sum(starts.values())}, after {dict(counts['precedes'])}")
    sim = simulate(spans, morphemes)
    print(
        f"\nthe rule on the {sim['gold']} gold spans: {len(sim['changed'])} changed (right → wrong); "
        f"on the {sim['extended']} gold spans extended by their glued particles/endings: {sim['restored']} restored"
    )
    for line in sim["changed"][:40]:
        print("  ", line)
    result = {
        "gold_answers": len(spans),
        "ends": dict(ends),
        "follows": dict(follows),
        "starts": dict(starts),
        "hosts": dict(host_counts),
        "learned_trim_tags": learned,
        "learned_host_tags": learned_hosts,
        "simulation": sim,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
