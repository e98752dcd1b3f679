"""Feature building: windows, labels, original-context offsets, the report, caching, validation."""

from __future__ import annotations

import copy
import json
import os
import re
import types
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import pytest

from kqa.features import FeatureConfig, FeatureReport, prepare_eval_features, prepare_train_features
from kqa.testing import KOREAN_EXAMPLES, build_fixed_wordpiece_tokenizer, fixed_wordpiece_vocab

SMALL = FeatureConfig(max_seq_length=48, doc_stride=16, max_query_length=8)
LONG_ANSWER = "부산특별시"


TEXTS = [ex["context"] for ex in KOREAN_EXAMPLES] + [ex["question"] for ex in KOREAN_EXAMPLES]


@pytest.fixture(scope="module")
def typed_tokenizer():
    """A WordPiece tokenizer built in memory with multi-character pieces besides the characters:
    BERT-style, with token_type_ids among its model inputs. Its vocabulary is computed from the text
    (the examples, and their answers weighted so that each answer is a piece of its own), so it is the
    same on every run; a trained one is not."""
    answers = [ex["answers"]["text"][0] for ex in KOREAN_EXAMPLES]
    texts = TEXTS + answers * 8
    tokenizer = build_fixed_wordpiece_tokenizer(texts, vocab_size=len(fixed_wordpiece_vocab(texts)) + 30)
    assert "token_type_ids" in tokenizer.model_input_names
    pieces = [t.removeprefix("##") for t in tokenizer.tokenize(" ".join(TEXTS))]
    assert any(len(p) > 1 for p in pieces) and any(len(p) == 1 for p in pieces)  # words, endings, characters
    return tokenizer


def test_the_fixed_vocabulary_is_a_function_of_the_text():
    characters = fixed_wordpiece_vocab(TEXTS)  # the special tokens and every character
    vocab = fixed_wordpiece_vocab(TEXTS, vocab_size=len(characters) + 30)
    assert fixed_wordpiece_vocab(list(TEXTS), vocab_size=len(characters) + 30) == vocab  # same text, same ids
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab[: len(characters)] == characters and len(vocab) == len(set(vocab)) == len(characters) + 30
    # The other pieces are words of the text, or endings of its words.
    words = {w for text in TEXTS for w in re.split(r"[\s,.?]+", text) if w}
    for piece in vocab[len(characters) :]:
        text = piece.removeprefix("##")
        assert len(text) > 1, piece
        assert text in words if piece == text else any(w.endswith(text) and w != text for w in words), piece
    tokenizer = build_fixed_wordpiece_tokenizer(TEXTS, vocab_size=len(characters) + 30)
    assert tokenizer.get_vocab() == {token: i for i, token in enumerate(vocab)}
    assert tokenizer.unk_token_id not in tokenizer(" ".join(TEXTS))["input_ids"]


def _dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(copy.deepcopy(rows))


def _long_example() -> dict:
    """A context many windows long (at SMALL) whose only answer sits at its very end."""
    filler = " ".join(ex["context"] for ex in KOREAN_EXAMPLES[::2]) * 3
    # Built from characters the tiny tokenizer knows, so the answer is not swallowed by an [UNK].
    tail = " 가장 큰 항구 도시는 부산특별시이다."
    context = filler + tail
    answer_start = context.index(LONG_ANSWER)
    assert answer_start > len(filler)
    return {
        "id": "long-1",
        "title": "",
        "context": context,
        "question": "가장 큰 항구 도시는?",
        "answers": {"text": [LONG_ANSWER], "answer_start": [answer_start]},
        "is_impossible": False,
    }


def _context_tokens(feature) -> list[int]:
    """Indices of the tokens that carry a context offset."""
    return [t for t, (a, _) in enumerate(feature["offset_mapping"]) if a >= 0]


def _window_span(feature) -> tuple[int, int]:
    """The original-context characters a window's context tokens cover."""
    offsets = [feature["offset_mapping"][t] for t in _context_tokens(feature)]
    return offsets[0][0], offsets[-1][1]


def _labelled_text(context: str, train_feature, eval_feature) -> str:
    offsets = eval_feature["offset_mapping"]
    return context[offsets[train_feature["start_positions"]][0] : offsets[train_feature["end_positions"]][1]]


# ---- windows and labels ------------------------------------------------------------------------------


def test_long_context_is_split_into_windows_and_the_late_answer_is_labelled(tiny_tokenizer):
    example = _long_example()
    examples = _dataset([example])
    train, report = prepare_train_features(examples, tiny_tokenizer, SMALL)
    evals, _ = prepare_eval_features(examples, tiny_tokenizer, SMALL)

    assert len(train) >= 5, "a context this long must need several 48-token windows"
    assert report.num_features == len(train) and report.num_multi_window_examples == 1
    assert all(len(ids) <= SMALL.max_seq_length for ids in train["input_ids"])
    assert train["example_id"] == evals["example_id"] == ["long-1"] * len(train)

    gold_start = example["answers"]["answer_start"][0]
    gold_end = gold_start + len(LONG_ANSWER)
    holding = []
    for k, (tf, ef) in enumerate(zip(train, evals)):
        lo, hi = _window_span(ef)
        holds = lo <= gold_start and gold_end <= hi
        if holds:
            holding.append(k)
            assert _labelled_text(example["context"], tf, ef) == LONG_ANSWER
        else:
            assert tf["start_positions"] == tf["end_positions"] == 0  # CLS
    assert holding, "no window holds the answer"
    assert holding[-1] == len(train) - 1 and 0 not in holding, "the answer sits at the end of the context"
    assert report.num_windows_without_answer == len(train) - len(holding)
    assert report.num_lost_answers == 0 and report.num_exact_answers == 1


def test_consecutive_windows_overlap_by_doc_stride_and_cover_the_context(tiny_tokenizer):
    example = _long_example()
    evals, _ = prepare_eval_features(_dataset([example]), tiny_tokenizer, SMALL)
    windows = [[(f["input_ids"][t], tuple(f["offset_mapping"][t])) for t in _context_tokens(f)] for f in evals]
    for previous, current in zip(windows, windows[1:]):
        assert current[: SMALL.doc_stride] == previous[-SMALL.doc_stride :]
        assert len(current) > SMALL.doc_stride  # every window moves forward
    # Every character of the context (but whitespace) lies in some window's tokens.
    covered = set()
    for window in windows:
        for _, (a, b) in window:
            covered.update(range(a, b))
    context = example["context"]
    assert {i for i, ch in enumerate(context) if not ch.isspace()} <= covered


def test_labels_decode_to_the_gold_answer_on_korean_examples(typed_tokenizer):
    examples = _dataset(KOREAN_EXAMPLES)
    train, report = prepare_train_features(examples, typed_tokenizer)
    evals, _ = prepare_eval_features(examples, typed_tokenizer)
    by_id = {ex["id"]: ex for ex in KOREAN_EXAMPLES}
    # Answers inside longer tokens cannot decode exactly (see the shared-data test); these are whole tokens.
    assert any(len(t.removeprefix("##")) > 1 for t in typed_tokenizer.convert_ids_to_tokens(train[0]["input_ids"]))
    for tf, ef in zip(train, evals):
        ex = by_id[tf["example_id"]]
        assert _labelled_text(ex["context"], tf, ef) == ex["answers"]["text"][0]
    assert set(train.column_names) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "start_positions",
        "end_positions",
        "example_id",
    }
    assert set(evals.column_names) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "example_id",
        "cls_index",
        "offset_mapping",
    }
    assert evals["cls_index"] == [f["input_ids"].index(typed_tokenizer.cls_token_id) for f in evals]
    assert report.num_examples == len(KOREAN_EXAMPLES) and report.num_exact_answers == len(KOREAN_EXAMPLES)


def test_token_type_ids_are_kept_only_when_the_tokenizer_uses_them(typed_tokenizer):
    examples = _dataset(KOREAN_EXAMPLES[:2])
    typed, _ = prepare_train_features(examples, typed_tokenizer)
    untyped_tokenizer = copy.deepcopy(typed_tokenizer)
    untyped_tokenizer.model_input_names = ["input_ids", "attention_mask"]  # like RoBERTa / XLM-R
    untyped, _ = prepare_train_features(examples, untyped_tokenizer)
    assert "token_type_ids" not in untyped.column_names
    sep = typed_tokenizer.sep_token_id
    for f in typed:
        first_sep = f["input_ids"].index(sep)
        # [CLS] question [SEP] is segment 0, the context and its [SEP] segment 1.
        assert f["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(f["input_ids"]) - first_sep - 1)


def test_train_and_eval_features_are_the_same_windows(tiny_tokenizer):
    examples = _dataset(KOREAN_EXAMPLES + [_long_example()])
    train, _ = prepare_train_features(examples, tiny_tokenizer, SMALL)
    evals, _ = prepare_eval_features(examples, tiny_tokenizer, SMALL)
    assert train["example_id"] == evals["example_id"]
    assert train["input_ids"] == evals["input_ids"]
    assert "start_positions" not in evals.column_names  # unlabelled by default: examples need no answers
    assert "offset_mapping" not in train.column_names  # the training loop never decodes spans


def test_labelled_eval_features_carry_the_train_labels_from_one_tokenisation(tiny_tokenizer):
    """The loop's validation features: offsets (to decode answers) and labels (for the evaluation loss)
    from one pass, equal to what the two separate builders give."""
    examples = _dataset(KOREAN_EXAMPLES + [_long_example()])
    train, _ = prepare_train_features(examples, tiny_tokenizer, SMALL)
    evals, _ = prepare_eval_features(examples, tiny_tokenizer, SMALL)
    both, report = prepare_eval_features(examples, tiny_tokenizer, SMALL, with_labels=True)
    for column in ("input_ids", "example_id", "start_positions", "end_positions"):
        assert both[column] == train[column], column
    for column in ("offset_mapping", "cls_index"):
        assert both[column] == evals[column], column
    assert report.num_lost_answers == 0
    assert set(both["cls_index"]) == {0}  # BERT-style: [CLS] first


def test_unanswerable_and_out_of_window_features_are_labelled_cls_and_counted(tiny_tokenizer):
    impossible = {
        **copy.deepcopy(KOREAN_EXAMPLES[0]),
        "id": "no-answer",
        "is_impossible": True,
        "answers": {"text": [], "answer_start": []},
    }
    examples = _dataset([_long_example(), impossible])
    train, report = prepare_train_features(examples, tiny_tokenizer, SMALL)
    cls_windows = sum(1 for f in train if f["start_positions"] == f["end_positions"] == 0)
    impossible_windows = [f for f in train if f["example_id"] == "no-answer"]

    assert impossible_windows and all(f["start_positions"] == 0 for f in impossible_windows)
    assert 0 < cls_windows < len(train)
    assert report.num_windows_without_answer == cls_windows
    assert report.num_unanswerable_examples == 1
    assert report.num_lost_answers == 0 and report.lost_answer_ids == []


def test_xlmr_offsets_exclude_the_space_glued_to_sentencepiece_tokens(xlmr_tokenizer):
    examples = _dataset(KOREAN_EXAMPLES)
    train, report = prepare_train_features(examples, xlmr_tokenizer)
    evals, _ = prepare_eval_features(examples, xlmr_tokenizer)
    assert "token_type_ids" not in train.column_names  # XLM-R does not use them
    for ex, ef in zip(KOREAN_EXAMPLES, evals):
        for a, b in ef["offset_mapping"]:
            if a >= 0:
                piece = ex["context"][a:b]
                assert piece and piece == piece.strip()
    for tf, ef in zip(train, evals):
        ex = next(e for e in KOREAN_EXAMPLES if e["id"] == tf["example_id"])
        assert tf["start_positions"] > 0
        assert ex["answers"]["text"][0] in _labelled_text(ex["context"], tf, ef)
        # the CLS of XLM-R is <s> at position 0
        assert tf["input_ids"][0] == xlmr_tokenizer.cls_token_id
    assert report.num_lost_answers == 0


# ---- questions ------------------------------------------------------------------------------------


def test_long_questions_are_truncated_to_max_query_length_and_counted(tiny_tokenizer):
    long_question = dict(
        copy.deepcopy(KOREAN_EXAMPLES[0]),
        id="long-q",
        question="대한민국의 수도와 가장 큰 항구 도시는 각각 어디인가? 그리고 한강은 어디를 지나는가?",
    )
    short_question = dict(copy.deepcopy(KOREAN_EXAMPLES[0]), id="short-q", question="수도는?")
    examples = _dataset([long_question, short_question])
    train, report = prepare_train_features(examples, tiny_tokenizer, SMALL)
    # BERT layout: [CLS] question [SEP] context [SEP].
    sep = tiny_tokenizer.sep_token_id
    question_lengths = {f["example_id"]: f["input_ids"].index(sep) - 1 for f in train}

    def full_length(text):
        return len(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])

    assert full_length(long_question["question"]) > SMALL.max_query_length
    assert question_lengths["long-q"] == SMALL.max_query_length
    assert question_lengths["short-q"] == full_length("수도는?") < SMALL.max_query_length
    assert report.num_truncated_questions == 1
    assert report.num_lost_answers == 0


def test_leading_whitespace_of_questions_is_ignored(tiny_tokenizer):
    padded = dict(copy.deepcopy(KOREAN_EXAMPLES[0]), question="  \t" + KOREAN_EXAMPLES[0]["question"])
    plain, _ = prepare_eval_features(_dataset([KOREAN_EXAMPLES[0]]), tiny_tokenizer)
    stripped, _ = prepare_eval_features(_dataset([padded]), tiny_tokenizer)
    assert plain["input_ids"] == stripped["input_ids"]
    assert plain["offset_mapping"] == stripped["offset_mapping"]


# ---- Unicode -------------------------------------------------------------------------------------


def test_nfd_context_offsets_point_into_the_original_nfd_text(tiny_tokenizer):
    source = KOREAN_EXAMPLES[4]  # answer 훈민정음, after other Hangul syllables
    nfd_context = unicodedata.normalize("NFD", source["context"])
    nfd_answer = unicodedata.normalize("NFD", source["answers"]["text"][0])
    nfd_start = nfd_context.index(nfd_answer)
    assert len(nfd_context) > len(source["context"])  # really decomposed
    example = dict(
        copy.deepcopy(source), context=nfd_context, answers={"text": [nfd_answer], "answer_start": [nfd_start]}
    )

    train, report = prepare_train_features(_dataset([example]), tiny_tokenizer)
    evals, _ = prepare_eval_features(_dataset([example]), tiny_tokenizer)
    nfc_evals, _ = prepare_eval_features(_dataset([source]), tiny_tokenizer)

    assert _labelled_text(nfd_context, train[0], evals[0]) == nfd_answer
    assert report.num_exact_answers == 1
    # Tokenised in NFC: the same tokens as the NFC text, offsets in NFD characters.
    assert evals["input_ids"] == nfc_evals["input_ids"]
    for (a, b), (na, nb) in zip(evals[0]["offset_mapping"], nfc_evals[0]["offset_mapping"]):
        if a < 0:
            assert na < 0
            continue
        assert unicodedata.normalize("NFC", nfd_context[a:b]) == source["context"][na:nb]
    # The last token (the final ".") ends at the end of the NFD string, longer than the NFC one.
    assert max(b for _, b in evals[0]["offset_mapping"]) == len(nfd_context)


# ---- eval offsets ------------------------------------------------------------------------------------


def test_eval_offsets_are_masked_outside_the_context(typed_tokenizer):
    tiny_tokenizer = typed_tokenizer
    examples = _dataset(KOREAN_EXAMPLES + [_long_example()])
    evals, _ = prepare_eval_features(examples, tiny_tokenizer, SMALL)
    specials = {tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id}
    contexts = {ex["id"]: ex["context"] for ex in examples}
    for f in evals:
        context = contexts[f["example_id"]]
        assert len(f["offset_mapping"]) == len(f["input_ids"])
        for token_id, token_type, (a, b) in zip(f["input_ids"], f["token_type_ids"], f["offset_mapping"]):
            if token_type == 0 or token_id in specials:
                assert (a, b) == (-1, -1)
            else:
                assert 0 <= a < b <= len(context)
                # the token's characters (WordPiece marks continuations with ##)
                assert context[a:b] == tiny_tokenizer.convert_ids_to_tokens(token_id).removeprefix("##")


def test_eval_features_need_no_answers(tiny_tokenizer):
    rows = [{"id": ex["id"], "question": ex["question"], "context": ex["context"]} for ex in KOREAN_EXAMPLES]
    evals, report = prepare_eval_features(_dataset(rows), tiny_tokenizer)
    assert len(evals) == len(rows)
    assert report.num_unanswerable_examples == len(rows) and report.num_lost_answers == 0
    with pytest.raises(ValueError, match="answers"):
        prepare_train_features(_dataset(rows), tiny_tokenizer)


# ---- report, caching, processes -----------------------------------------------------------------


def _file_backed(rows: list[dict], path: Path) -> datasets.Dataset:
    _dataset(rows).save_to_disk(str(path))
    return datasets.load_from_disk(str(path))


def _cache_stamp(features) -> list[tuple[str, int, int]]:
    stamps = []
    for entry in features.cache_files:
        st = os.stat(entry["filename"])
        stamps.append((entry["filename"], st.st_ino, st.st_mtime_ns))
    return stamps


def test_second_call_on_a_file_backed_dataset_is_served_from_the_cache(tiny_tokenizer, tmp_path):
    examples = _file_backed(KOREAN_EXAMPLES + [_long_example()], tmp_path / "examples")
    first, first_report = prepare_train_features(examples, tiny_tokenizer, SMALL)
    stamp = _cache_stamp(first)
    assert stamp and all(name.startswith(str(tmp_path)) for name, _, _ in stamp)

    second, second_report = prepare_train_features(examples, tiny_tokenizer, SMALL)
    assert _cache_stamp(second) == stamp  # the same file, not rewritten
    assert second_report == first_report and second.to_list() == first.to_list()

    # Control: refusing the cache rewrites the file, so the check above can tell the two apart.
    third, third_report = prepare_train_features(examples, tiny_tokenizer, SMALL, load_from_cache_file=False)
    assert _cache_stamp(third) != stamp
    assert third_report == first_report

    # Other settings are other features: no stale cache hit.
    other, _ = prepare_train_features(
        examples, tiny_tokenizer, FeatureConfig(max_seq_length=64, doc_stride=16, max_query_length=8)
    )
    assert [e["filename"] for e in other.cache_files] != [name for name, _, _ in stamp]


def test_in_memory_examples_are_cached_by_content(tiny_tokenizer, tmp_path, monkeypatch):
    # Examples loaded from JSON live in memory; their features are still tokenised only once per content.
    monkeypatch.setenv("KQA_CACHE_DIR", str(tmp_path / "cache"))
    first, first_report = prepare_train_features(_dataset(KOREAN_EXAMPLES), tiny_tokenizer, SMALL)
    stamp = _cache_stamp(first)
    assert stamp and all(name.startswith(str(tmp_path / "cache")) for name, _, _ in stamp)

    again, again_report = prepare_train_features(_dataset(KOREAN_EXAMPLES), tiny_tokenizer, SMALL)
    assert _cache_stamp(again) == stamp and again_report == first_report
    assert again.to_list() == first.to_list()

    edited = copy.deepcopy(KOREAN_EXAMPLES)
    edited[0]["question"] = "대한민국의 수도는?"
    other, _ = prepare_train_features(_dataset(edited), tiny_tokenizer, SMALL)
    assert [e["filename"] for e in other.cache_files] != [name for name, _, _ in stamp]

    uncached, _ = prepare_eval_features(_dataset(KOREAN_EXAMPLES), tiny_tokenizer, SMALL, cache=False)
    assert uncached.cache_files == []


_BUILD_IN_A_FRESH_PROCESS = """
import json, os, sys
import datasets
from transformers import AutoTokenizer
import kqa.features
from kqa.features import prepare_eval_features
from kqa.testing import KOREAN_EXAMPLES

source, examples_dir, tokenizer_dir = sys.argv[1:]
assert os.path.realpath(kqa.features.__file__).startswith(os.path.realpath(source)), kqa.features.__file__
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
stamps = {}
for kind, examples in [("in memory", datasets.Dataset.from_list(KOREAN_EXAMPLES)),
                       ("file backed", datasets.load_from_disk(examples_dir))]:
    features, _ = prepare_eval_features(examples, tokenizer)
    stamps[kind] = [[e["filename"], os.stat(e["filename"]).st_ino, os.stat(e["filename"]).st_mtime_ns]
                    for e in features.cache_files]
print("STAMPS " + json.dumps(stamps))
"""


def test_a_change_to_the_feature_code_is_a_cache_miss(tiny_tokenizer_dir, tmp_path):
    # Each build runs in a new process on a copy of the kqa package, as after a real edit or upgrade.
    import shutil
    import subprocess
    import sys

    import kqa

    source = tmp_path / "src"
    shutil.copytree(Path(kqa.__file__).parent, source / "kqa", ignore=shutil.ignore_patterns("__pycache__"))
    _dataset(KOREAN_EXAMPLES).save_to_disk(str(tmp_path / "examples"))
    env = {**os.environ, "PYTHONPATH": str(source), "KQA_CACHE_DIR": str(tmp_path / "cache")}

    def build() -> dict:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _BUILD_IN_A_FRESH_PROCESS,
                str(source),
                str(tmp_path / "examples"),
                str(tiny_tokenizer_dir),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.split("STAMPS ", 1)[1])

    first = build()
    assert all(first.values())  # both kinds of examples were cached
    assert build() == first  # unchanged code, another process: the same cache files, not rewritten
    with (source / "kqa" / "features.py").open("a", encoding="utf-8") as f:
        f.write("\n# an edit that changes no behaviour still changes the code\n")
    edited = build()
    for kind in first:
        assert edited[kind] != first[kind], kind  # rebuilt, not served from the old cache


def test_report_is_the_same_with_several_processes(tiny_tokenizer):
    short_q = dict(copy.deepcopy(KOREAN_EXAMPLES[0]), id="short-q", question="수도는?")
    rows = KOREAN_EXAMPLES + [_long_example(), short_q]
    single, single_report = prepare_train_features(_dataset(rows), tiny_tokenizer, SMALL)
    multi, multi_report = prepare_train_features(_dataset(rows), tiny_tokenizer, SMALL, num_proc=2)
    assert multi_report == single_report
    # Every count is exercised: most questions exceed 8 tokens, every context 48-token windows.
    assert 0 < single_report.num_truncated_questions < len(rows)
    assert 0 < single_report.num_multi_window_examples
    assert 0 < single_report.num_windows_without_answer
    assert multi.to_list() == single.to_list()


def test_report_summary_names_the_counts():
    report = FeatureReport(
        num_examples=10,
        num_features=14,
        num_multi_window_examples=3,
        num_windows_without_answer=5,
        num_truncated_questions=2,
        num_lost_answers=1,
        num_inexact_answers=2,
        lost_answer_ids=["q7"],
    )
    text = report.summary()
    assert "10 examples -> 14 features" in text and "5 windows labelled CLS" in text
    assert "2 questions truncated" in text and "1 lost" in text and "q7" in text
    assert report.num_exact_answers == 7


def test_report_is_logged(tiny_tokenizer, caplog):
    with caplog.at_level("INFO", logger="kqa.features"):
        _, report = prepare_train_features(_dataset(KOREAN_EXAMPLES), tiny_tokenizer)
    assert report.summary() in caplog.text


# ---- validation ------------------------------------------------------------------------------------


def test_config_rejects_a_stride_that_leaves_no_room():
    with pytest.raises(ValueError, match="doc_stride"):
        FeatureConfig(max_seq_length=64, doc_stride=40, max_query_length=30)  # room is 64 - 30 - 3 = 31
    with pytest.raises(ValueError, match="doc_stride"):
        FeatureConfig(max_seq_length=384, doc_stride=-1)
    with pytest.raises(ValueError, match="max_query_length"):
        FeatureConfig(max_query_length=0)
    with pytest.raises(ValueError, match="max_seq_length"):
        FeatureConfig(max_seq_length="384")
    FeatureConfig(max_seq_length=64, doc_stride=30, max_query_length=30)  # 30 < 31: fine


def test_room_check_counts_the_tokenizers_special_tokens(xlmr_tokenizer, tiny_tokenizer):
    # XLM-R adds 4 special tokens to a pair (<s> q </s></s> c </s>), BERT 3.
    config = FeatureConfig(max_seq_length=64, doc_stride=30, max_query_length=30)
    prepare_train_features(_dataset(KOREAN_EXAMPLES[:1]), tiny_tokenizer, config)
    with pytest.raises(ValueError, match="4 special tokens"):
        prepare_train_features(_dataset(KOREAN_EXAMPLES[:1]), xlmr_tokenizer, config)


def test_max_seq_length_beyond_the_tokenizer_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="model_max_length"):
        prepare_train_features(_dataset(KOREAN_EXAMPLES), tiny_tokenizer, FeatureConfig(max_seq_length=1024))


def test_slow_tokenizers_are_rejected():
    slow = types.SimpleNamespace(is_fast=False)
    with pytest.raises(TypeError, match="fast tokenizer"):
        prepare_train_features(_dataset(KOREAN_EXAMPLES), slow)


def test_bad_examples_raise_naming_the_record(tiny_tokenizer):
    wrong_start = dict(
        copy.deepcopy(KOREAN_EXAMPLES[0]), id="bad-start", answers={"text": ["서울"], "answer_start": [3]}
    )
    with pytest.raises(ValueError, match="bad-start"):
        prepare_train_features(_dataset([wrong_start]), tiny_tokenizer)
    empty_question = dict(copy.deepcopy(KOREAN_EXAMPLES[0]), id="blank-q", question="   ")
    with pytest.raises(ValueError, match="blank-q.*question"):
        prepare_eval_features(_dataset([empty_question]), tiny_tokenizer)
    duplicate = _dataset([KOREAN_EXAMPLES[0], KOREAN_EXAMPLES[0]])
    with pytest.raises(ValueError, match="unique"):
        prepare_eval_features(duplicate, tiny_tokenizer)
    with pytest.raises(ValueError, match="no examples"):
        prepare_eval_features(_dataset(KOREAN_EXAMPLES).select([]), tiny_tokenizer)


# ---- all shared data: no answer is lost ----------------------------------------------------------------


def _read_squad_rows(path: Path) -> list[dict]:
    """Flat rows straight from a SQuAD JSON file (kept local so this test stands on its own)."""
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in qa["answers"]],
                            "answer_start": [a["answer_start"] for a in qa["answers"]],
                        },
                        "is_impossible": bool(qa.get("is_impossible", False)),
                    }
                )
    return rows


@pytest.mark.integration
@pytest.mark.parametrize("tokenizer_name", ["wordpiece_16k", "xlmr_tokenizer"])
def test_no_answer_is_lost_on_the_shared_data(tokenizer_name, shared_json_files, request):
    tokenizer = request.getfixturevalue(tokenizer_name)
    config = FeatureConfig(max_seq_length=384, doc_stride=128, max_query_length=64)
    for path in shared_json_files:
        rows = _read_squad_rows(path)
        examples = datasets.Dataset.from_list(rows)
        train, report = prepare_train_features(examples, tokenizer, config)
        evals, _ = prepare_eval_features(examples, tokenizer, config)
        assert train["example_id"] == evals["example_id"]

        by_id = {r["id"]: r for r in rows}
        held_by: dict[str, int] = Counter()
        aligned: dict[str, bool] = {}
        exact: dict[str, bool] = defaultdict(lambda: True)
        for tf, ef in zip(train, evals):
            row = by_id[tf["example_id"]]
            gold = row["answers"]["text"][0]
            gold_start = row["answers"]["answer_start"][0]
            gold_end = gold_start + len(gold)
            context_offsets = [tuple(o) for o in ef["offset_mapping"] if o[0] >= 0]
            window_lo, window_hi = context_offsets[0][0], context_offsets[-1][1]
            if tf["start_positions"] == 0:
                # CLS only where the window really misses part of the answer.
                assert not (window_lo <= gold_start and gold_end <= window_hi), tf["example_id"]
                continue
            held_by[tf["example_id"]] += 1
            start, end = ef["offset_mapping"][tf["start_positions"]], ef["offset_mapping"][tf["end_positions"]]
            assert start[0] >= 0 and end[0] >= 0 and tf["start_positions"] <= tf["end_positions"]
            decoded = row["context"][start[0] : end[1]]
            assert gold in decoded
            # Token-aligned: some token starts where the answer starts and some token ends where it ends.
            is_aligned = any(a == gold_start for a, _ in context_offsets) and any(
                b == gold_end for _, b in context_offsets
            )
            aligned[tf["example_id"]] = is_aligned
            exact[tf["example_id"]] &= decoded == gold
            if is_aligned:
                assert decoded == gold, (tf["example_id"], gold, decoded)

        lost = [r["id"] for r in rows if r["answers"]["text"] and r["id"] not in held_by]
        non_aligned = sorted(i for i, ok in aligned.items() if not ok)
        windows = Counter(train["example_id"])
        print(
            f"\n[{tokenizer_name}] {path.parent.name}/{path.name}: {len(rows)} examples, {len(train)} features, "
            f"{sum(1 for n in windows.values() if n > 1)} multi-window examples, {len(lost)} lost, "
            f"{sum(1 for i in exact if exact[i])} exact, {len(non_aligned)} not token-aligned"
        )

        assert lost == [] and report.num_lost_answers == 0
        assert report.num_examples == len(rows) and report.num_features == len(train)
        assert report.num_multi_window_examples == sum(1 for n in windows.values() if n > 1)
        # Every non-aligned answer, and only those, is reported as inexact.
        assert sorted(report.inexact_answer_ids) == non_aligned
        assert report.num_exact_answers == sum(1 for i in exact if exact[i]) == len(rows) - len(non_aligned)


def test_the_tokenizers_call_state_neither_misses_the_cache_nor_is_lost(tiny_tokenizer, tmp_path, monkeypatch):
    # A fast tokenizer's backend remembers the truncation/padding of its last call; that is not part of
    # its identity, so it must not turn a warm cache cold, and looking the cache up must not reset it.
    monkeypatch.setenv("KQA_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = copy.deepcopy(tiny_tokenizer)  # the session's tokenizer keeps its state
    backend = tokenizer.backend_tokenizer
    backend.no_truncation()
    backend.no_padding()
    first, first_report = prepare_eval_features(_dataset(KOREAN_EXAMPLES), tokenizer, SMALL)
    stamp = _cache_stamp(first)
    assert stamp

    backend.enable_truncation(max_length=37, stride=5, strategy="only_second")
    backend.enable_padding(pad_to_multiple_of=8, pad_id=0, pad_token="[PAD]")
    truncation, padding = backend.truncation, backend.padding
    again, again_report = prepare_eval_features(_dataset(KOREAN_EXAMPLES), tokenizer, SMALL)
    assert _cache_stamp(again) == stamp  # served from the same file, not rebuilt
    assert again.to_list() == first.to_list() and again_report == first_report
    assert backend.truncation == truncation and backend.padding == padding

    # Control: a tokenizer that splits the text differently gets its own features, not the cached ones.
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["서울"])
    other_features, _ = prepare_eval_features(_dataset(KOREAN_EXAMPLES), other, SMALL)
    assert _cache_stamp(other_features) != stamp
    assert other_features.to_list() != first.to_list()
    assert (
        other_features.to_list()
        == prepare_eval_features(_dataset(KOREAN_EXAMPLES), other, SMALL, cache=False)[0].to_list()
    )


def _context_offsets_per_token(offset_mapping, sequence_ids, nfc_context, origin):
    """The plain per-token reference for kqa.spans.context_offsets."""
    result = []
    for (a, b), seq in zip(offset_mapping, sequence_ids):
        if seq != 1:
            result.append([-1, -1])
            continue
        while a < b and nfc_context[a].isspace():
            a += 1
        while b > a and nfc_context[b - 1].isspace():
            b -= 1
        result.append([int(origin[a]), int(origin[b])] if a < b else [-1, -1])
    return result


def test_the_whitespace_table_is_str_isspace_on_every_code_point():
    import sys

    from kqa.spans import whitespace_trim_tables as _whitespace_trim_tables

    text = "".join(chr(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF)  # no surrogates
    skip, _ = _whitespace_trim_tables(text)
    found = [text[i] for i in range(len(text)) if skip[i] != i]  # skipped over: whitespace
    assert found == [c for c in text if c.isspace()]


@pytest.mark.parametrize("seed", range(20))
def test_vectorised_context_offsets_equal_the_per_token_loop(seed):
    import numpy as np

    from kqa.spans import context_offsets as _context_offsets
    from kqa.spans import whitespace_trim_tables as _whitespace_trim_tables
    from kqa.text import nfc_with_alignment

    rng = np.random.default_rng(seed)
    alphabet = list("가나다라마바사 아자차카") + [" ", " ", "\n", "\t", "\u3000", "\xa0", "\x1c", "a", "1", "."]
    original = unicodedata.normalize("NFD", "".join(rng.choice(alphabet, size=int(rng.integers(1, 120)))))
    nfc, origin = nfc_with_alignment(original)
    n = len(nfc)
    # Random token spans (some empty, some all-whitespace, some overlapping) in question/context/special slots.
    starts = rng.integers(0, n + 1, size=60)
    ends = np.minimum(starts + rng.integers(0, 6, size=60), n)
    offset_mapping = [(int(a), int(b)) for a, b in zip(starts, ends)]
    if seed % 2:  # any layout
        sequence_ids = [None if r < 0.1 else (0 if r < 0.3 else 1) for r in rng.random(60)]
    else:  # a pair encoding's: special, question, special, context, special (contiguous context)
        question_length = int(rng.integers(1, 20))
        context_length = 60 - question_length - 3 if seed % 4 else 0  # and one window without context
        sequence_ids = [None] + [0] * question_length + [None] + [1] * context_length + [None]
        sequence_ids += [None] * (60 - len(sequence_ids))
    assert _context_offsets([(0, 0)], [1], _whitespace_trim_tables(""), np.zeros(1, dtype=np.int64)).tolist() == [
        [-1, -1]
    ]
    got = _context_offsets(offset_mapping, sequence_ids, _whitespace_trim_tables(nfc), origin).tolist()
    assert got == _context_offsets_per_token(offset_mapping, sequence_ids, nfc, origin)
    assert any(span != [-1, -1] for span in got) or n < 3 or 1 not in sequence_ids


class _SerialisationProbe:
    """An attribute that counts how often the object holding it is serialised (pickled or hashed)."""

    count = 0

    def __reduce__(self):
        type(self).count += 1
        return (_SerialisationProbe, ())


def test_uncached_features_of_in_memory_examples_never_serialise_the_tokenizer(tiny_tokenizer, tmp_path, monkeypatch):
    # Serialising the tokenizer (to fingerprint a map) cost ~10 ms per call, most of the feature time of
    # a one-question prediction; with nothing cached, nothing needs it.
    reference, _ = prepare_eval_features(_dataset(KOREAN_EXAMPLES), tiny_tokenizer, SMALL, cache=False)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.serialisation_probe = _SerialisationProbe()
    monkeypatch.setattr(_SerialisationProbe, "count", 0)

    features, report = prepare_eval_features(_dataset(KOREAN_EXAMPLES), tokenizer, SMALL, cache=False)
    assert features.to_list() == reference.to_list() and report.num_examples == len(KOREAN_EXAMPLES)
    assert _SerialisationProbe.count == 0
    assert features.cache_files == []
    # A file-backed dataset's cache is named by kqa's digest of the tokenizer (file_backed_fingerprint), not
    # by `datasets` serialising it.
    prepare_eval_features(_file_backed(KOREAN_EXAMPLES, tmp_path / "examples"), tokenizer, SMALL, cache=False)
    assert _SerialisationProbe.count == 0
    from datasets.fingerprint import Hasher

    Hasher.hash(tokenizer)  # control: the probe sees a serialisation
    assert _SerialisationProbe.count > 0


def test_windows_built_without_map_equal_the_mapped_ones(typed_tokenizer):
    rows = [*KOREAN_EXAMPLES, _long_example()]
    mapped, mapped_report = prepare_eval_features(_dataset(rows), typed_tokenizer, SMALL, cache=False)
    direct, direct_report = prepare_eval_features(_dataset(rows), typed_tokenizer, SMALL, cache=False, progress=False)
    assert len(direct) > len(rows)  # the long example has several windows
    assert direct.features == mapped.features
    assert direct.to_dict() == mapped.to_dict()
    assert direct_report == mapped_report
