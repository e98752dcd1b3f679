"""Where long paragraphs are cut into passages: at Kiwi's sentence ends (`PassageSettings(sentences="kiwi")`,
the default) vs the punctuation regex (`sentences="regex"`, the fallback), in the same run on the same
corpus, and what it does to BM25 retrieval.

The corpus is every context of the dev files given (SQuAD JSON), one document each, split with the
default passage settings (or --max_chars / --overlap_chars). A "cut" is a passage end inside a paragraph
(not the paragraph's own end); for each cut the table counts
- "no stop": the passage does not end in a full stop, ? or ! (closing quotes, brackets, "[11]" allowed): a
  measure that does not depend on Kiwi, though a Korean sentence may end without a stop;
- "mid-sentence (Kiwi)": the cut is not at a sentence end Kiwi finds in the whole paragraph;
and for each passage that begins inside a paragraph, "starts mid-sentence (Kiwi)" likewise.
Recall@k: the share of dev questions whose gold passage (one that holds a gold answer span) is among
the k best of BM25 over Kiwi morphemes.

    python benchmarks/bench_passage_ends.py                       # KorQuAD sample + TyDi dev in ../shared/data
    python benchmarks/bench_passage_ends.py --out ends.json --max_chars 300
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # this checkout's kqa
from bench_retrieval import RECALL_AT, dataset_name, is_gold, load_questions  # noqa: E402
from common import default_data_dir, machine_info, print_header, print_table, settings_from_args, write_json  # noqa: E402

# A full stop, ? or !, then closing quotes / brackets and citation marks such as "[11]" (Wikipedia's).
STOP_END = re.compile(r"[.!?。][\"'”’)\]」』》〉]*(\[\d+\])*$")


def measure(documents, questions_by_set, settings, depth: int) -> dict:
    import numpy as np

    from kqa.boundaries import kiwi
    from kqa.retrieval import Retriever, RetrieverSettings
    from kqa.retrieval.corpus import paragraph_spans, split_corpus
    from kqa.text import nfc_with_alignment

    t = time.perf_counter()
    passages = split_corpus(documents, settings)
    split_seconds = time.perf_counter() - t
    texts = {d.id: d.text for d in documents}
    cuts = no_stop = mid_end = starts = mid_start = 0
    boundaries: dict[tuple[str, int], set[int]] = {}  # (doc, paragraph start) → Kiwi sentence ends in it
    for p in passages:
        text = texts[p.doc_id]
        para = next((s, e) for s, e in paragraph_spans(text) if s <= p.start < e)
        if (p.doc_id, para[0]) not in boundaries:
            nfc, origin = nfc_with_alignment(text[para[0] : para[1]])  # Kiwi reads NFC
            sentences = kiwi().split_into_sents(nfc, return_sub_sents=False)
            offsets = {s.end for s in sentences} | {s.start for s in sentences}
            boundaries[(p.doc_id, para[0])] = {para[0] + int(origin[o]) for o in offsets}
        ends = boundaries[(p.doc_id, para[0])]
        if p.end < para[1]:
            cuts += 1
            no_stop += not STOP_END.search(p.text)
            mid_end += p.end not in ends
        if p.start > para[0]:
            starts += 1
            mid_start += p.start not in ends
    row = {
        "sentences": settings.sentences,
        "passages": len(passages),
        "cuts": cuts,
        "no stop": no_stop,
        "mid-sentence (Kiwi)": mid_end,
        "inner starts": starts,
        "starts mid-sentence (Kiwi)": mid_start,
        "split s": split_seconds,
    }
    retriever = Retriever.build(
        documents, RetrieverSettings(method="sparse", analyzer="morphemes"), passage_settings=settings
    )
    for set_name, questions in questions_by_set.items():
        found = retriever.retrieve_many([q["question"] for q in questions], depth)
        first = [next((h.rank for h in hits if is_gold(h.passage, q)), None) for q, hits in zip(questions, found)]
        for k in RECALL_AT:
            row[f"{set_name} R@{k}"] = float(np.mean([r is not None and r <= k for r in first]))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = default_data_dir()
    parser.add_argument(
        "--dev_files",
        nargs="+",
        type=Path,
        default=[data / "korquad-1.0-sample/KorQuAD_v1.0_dev.json", data / "tydiqa-goldp-ko/korean_tydiqa_dev.json"],
    )
    parser.add_argument("--max_chars", type=int, default=None, help="default: PassageSettings().max_chars")
    parser.add_argument("--overlap_chars", type=int, default=None, help="default: PassageSettings().overlap_chars")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    import json

    from kqa.retrieval import Document, PassageSettings
    from kqa.squad import squad_questions

    defaults = PassageSettings()
    max_chars = args.max_chars or defaults.max_chars
    overlap = defaults.overlap_chars if args.overlap_chars is None else args.overlap_chars
    machine = machine_info()
    print_header(machine, settings_from_args(args))
    documents, doc_id_of_context, questions_by_set = [], {}, {}
    for dev_file in args.dev_files:
        data = json.loads(dev_file.read_text(encoding="utf-8-sig"))
        for item in squad_questions(data, str(dev_file)):
            context = item.paragraph["context"]
            if context not in doc_id_of_context:
                doc_id_of_context[context] = f"c{len(documents)}"
                documents.append(Document(id=doc_id_of_context[context], title="", text=context, source=str(dev_file)))
        questions_by_set[dataset_name(dev_file)] = load_questions(dev_file, doc_id_of_context, None)
    rows = [
        measure(documents, questions_by_set, PassageSettings(max_chars, overlap, sentences=s), max(RECALL_AT))
        for s in ("regex", "kiwi")  # the reference first
    ]
    columns = [(k, k, ".3f" if "R@" in k or k.endswith(" s") else "d") for k in rows[0] if k != "sentences"]
    print_table(
        rows, [("sentences", "sentences", "s"), *columns], title=f"{len(documents)} contexts, max_chars {max_chars}"
    )
    write_json(args.out, machine=machine, settings=settings_from_args(args), rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
