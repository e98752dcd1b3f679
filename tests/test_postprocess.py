"""kqa.postprocess: decode_answers against a brute-force reference written from the documented rules,
hand-made cases, awkward windows, error handling and the prediction files."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random

import numpy as np
import pytest

from kqa.postprocess import (
    ExamplePrediction,
    PostprocessConfig,
    decode_answers,
    decode_answers_with_report,
    write_predictions,
)

NONE = [-1, -1]


# --------------------------------------------------------------------------------------------------
# The reference: the rules of kqa.postprocess, one pair at a time.
# --------------------------------------------------------------------------------------------------


def reference_postprocess(examples, features, start_logits, end_logits, config: PostprocessConfig):
    """id → dict(text, start, end, nbest=[(text, start, end, score, probability, start_logit,
    end_logit)], null_score, cls_score), written from the documented rules, not from the implementation.

    Per window it enumerates every start × end pair of context tokens and keeps a pair when its start
    is among the n_best_size best start logits, its end among the n_best_size best end logits (ties:
    lower index), end >= start, end - start + 1 <= max_answer_length and it covers a character.
    """
    windows_of = {ex["id"]: [] for ex in examples}
    for f, feature in enumerate(features):
        windows_of[feature["example_id"]].append(f)
    results = {}
    for ex in examples:
        context = ex["context"]
        best_of_span: dict[tuple[int, int], tuple[float, float, float]] = {}
        cls_score = None
        for f in windows_of[ex["id"]]:
            offsets = [NONE if o is None else o for o in features[f]["offset_mapping"]]
            s_logits = [float(x) for x in start_logits[f][: len(offsets)]]
            e_logits = [float(x) for x in end_logits[f][: len(offsets)]]
            cls = features[f].get("cls_index", -1)
            if 0 <= cls < len(offsets) and math.isfinite(s_logits[cls] + e_logits[cls]):
                window_null = s_logits[cls] + e_logits[cls]
                cls_score = window_null if cls_score is None else min(cls_score, window_null)
            context_tokens = [i for i, (a, _) in enumerate(offsets) if a >= 0]
            starts = {
                i
                for i in sorted(context_tokens, key=lambda i: (-s_logits[i], i))[: config.n_best_size]
                if s_logits[i] > -math.inf
            }
            ends = {
                j
                for j in sorted(context_tokens, key=lambda j: (-e_logits[j], j))[: config.n_best_size]
                if e_logits[j] > -math.inf
            }
            for i in context_tokens:  # pairs in (window, start token, end token) order
                if i not in starts:
                    continue
                for j in context_tokens:
                    if j not in ends or j < i or j - i + 1 > config.max_answer_length:
                        continue
                    span = (offsets[i][0], offsets[j][1])
                    if span[1] <= span[0]:
                        continue
                    score = s_logits[i] + e_logits[j]
                    if span not in best_of_span or score > best_of_span[span][0]:
                        best_of_span[span] = (score, s_logits[i], e_logits[j])
        null_score = cls_score if config.version_2_with_negative else None  # it competes in SQuAD 2.0 mode only
        ranked = sorted(best_of_span.items(), key=lambda item: (-item[1][0], item[0]))[: config.n_best_size]
        scores = [score for _, (score, _, _) in ranked]
        all_scores = scores + ([null_score] if null_score is not None else [])
        top = max(all_scores) if all_scores else 0.0
        denominator = sum(math.exp(s - top) for s in all_scores)
        nbest = [
            (context[a:b], a, b, score, math.exp(score - top) / denominator, sl, el)
            for (a, b), (score, sl, el) in ranked
        ]
        if not nbest or (null_score is not None and null_score - nbest[0][3] > config.null_score_diff_threshold):
            text, start, end = "", 0, 0
        else:
            text, start, end = nbest[0][:3]
        results[ex["id"]] = {
            **{"text": text, "start": start, "end": end, "nbest": nbest},
            **{"null_score": null_score, "cls_score": cls_score},
        }
    return results


def assert_matches_reference(predictions: dict[str, ExamplePrediction], expected: dict, context: str = "") -> None:
    assert list(predictions) == list(expected), context
    for example_id, want in expected.items():
        got = predictions[example_id]
        where = f"{context} example {example_id}"
        assert (got.text, got.start, got.end) == (want["text"], want["start"], want["end"]), where
        assert [(s.text, s.start, s.end) for s in got.nbest] == [n[:3] for n in want["nbest"]], where
        for span, (_, _, _, score, probability, start_logit, end_logit) in zip(got.nbest, want["nbest"]):
            assert span.score == pytest.approx(score, abs=1e-6), where
            assert span.probability == pytest.approx(probability, abs=1e-6), where
            assert span.start_logit == pytest.approx(start_logit, abs=1e-6), where
            assert span.end_logit == pytest.approx(end_logit, abs=1e-6), where
        for name in ("null_score", "cls_score"):
            if want[name] is None:
                assert getattr(got, name) is None, where
            else:
                assert getattr(got, name) == pytest.approx(want[name], abs=1e-6), where


def check(examples, features, start, end, config, context=""):
    """decode_answers against the reference of rules 1-4 (rule 5, answer_boundaries, is tests/test_boundaries.py's)."""
    config = dataclasses.replace(config, answer_boundaries="off")
    predictions = decode_answers(examples, features, start, end, config)
    assert_matches_reference(predictions, reference_postprocess(examples, features, start, end, config), context)
    for prediction, example in zip(predictions.values(), examples):
        for span in prediction.nbest:
            assert example["context"][span.start : span.end] == span.text
    return predictions


# --------------------------------------------------------------------------------------------------
# Random data: Korean-syllable contexts, overlapping windows, awkward tokens
# --------------------------------------------------------------------------------------------------


def random_logits(rng: random.Random, np_rng: np.random.Generator, features: list[dict]):
    """Padded logits; coarse values (many exact ties, as bfloat16-born logits have) 40 % of the time;
    huge values past each window's length, which must never matter."""
    width = max((len(f["offset_mapping"]) for f in features), default=1) + rng.randint(0, 4)
    shape = (len(features), width)
    start, end = np_rng.normal(0, 2, shape), np_rng.normal(0, 2, shape)
    if rng.random() < 0.4:
        start, end = np.round(start * 2) / 2, np.round(end * 2) / 2
    for f, feature in enumerate(features):
        start[f, len(feature["offset_mapping"]) :] = end[f, len(feature["offset_mapping"]) :] = 1e6
    dtype = rng.choice([np.float32, np.float64])
    return start.astype(dtype), end.astype(dtype)


def random_case(rng: random.Random, np_rng: np.random.Generator):
    """Examples, features (list rows) and padded logits exercising every rule."""
    examples, features = [], []
    for e in range(rng.randint(1, 6)):
        pieces, offsets, pos = [], [], 0
        for _ in range(rng.randint(1, 40)):
            n = rng.randint(1, 3)
            pieces.append("".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(n)))
            token = [pos, pos + n]
            pos += n
            roll = rng.random()
            if roll < 0.08 and n > 1:  # one character split over two tokens that share offsets
                offsets += [[token[0], token[0] + 1], [token[0], token[0] + 1], [token[0] + 1, token[1]]]
            elif roll < 0.12:  # a zero-width token before the real one
                offsets += [[token[0], token[0]], token]
            elif roll < 0.16:  # a zero-width token after it, at a boundary no other token has
                offsets += [token, [token[1], token[1]]]
            elif roll < 0.20:  # a whitespace-only token inside the context, marked non-context
                offsets += [token, NONE]
            else:
                offsets.append(token)
            if rng.random() < 0.3:
                pieces.append(" ")
                pos += 1
        if rng.random() < 0.1:  # offsets out of order
            rng.shuffle(offsets)
        example_id = f"ex{e}"
        examples.append({"id": example_id, "context": "".join(pieces)})
        if rng.random() < 0.1:
            continue  # an example without any window
        question = [NONE] * rng.randint(1, 5)
        capacity = rng.randint(2, 12)
        stride = rng.randint(1, capacity)
        lo = 0
        while True:
            chunk = offsets[lo : lo + capacity]
            features.append(
                {
                    "example_id": example_id,
                    "cls_index": 0,
                    "offset_mapping": [NONE] + question + [NONE] + chunk + [NONE],
                }
            )
            if lo + capacity >= len(offsets):
                break
            lo += stride
        if rng.random() < 0.1:  # a window without context tokens, or without any token
            features.append(
                {"example_id": example_id, "cls_index": 0, "offset_mapping": rng.choice([[NONE, NONE], []])}
            )
    if rng.random() < 0.3:
        rng.shuffle(features)  # windows need not arrive grouped by example
    return (examples, features, *random_logits(rng, np_rng, features))


def random_config(rng: random.Random, version_2: bool = False) -> PostprocessConfig:
    return PostprocessConfig(
        n_best_size=rng.choice([1, 2, 3, 5, 20]),
        max_answer_length=rng.choice([1, 2, 3, 5, 30]),
        version_2_with_negative=version_2,
        null_score_diff_threshold=rng.choice([-1.0, 0.0, 1.5]),
    )


@pytest.mark.parametrize("seed", range(60))
def test_matches_reference_on_random_windows(seed):
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    examples, features, start, end = random_case(rng, np_rng)
    check(examples, features, start, end, random_config(rng, version_2=seed % 3 == 0), f"seed {seed}")


@pytest.mark.parametrize("seed", range(12))
def test_crowded_windows_with_zero_width_tokens_and_unordered_offsets(seed):
    """Windows with many valid pairs (where kqa prunes) and tokens that cover no character or whose
    offsets go backwards: the best valid spans must all survive."""
    rng, np_rng = random.Random(1000 + seed), np.random.default_rng(1000 + seed)
    examples, features = [], []
    for e in range(4):
        context = "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(30))
        examples.append({"id": f"z{e}", "context": context})
        for _ in range(rng.randint(1, 3)):
            offsets = []
            for _ in range(rng.randint(8, 24)):
                a = rng.randint(0, 29)
                offsets.append([a, a] if rng.random() < 0.3 else [a, min(30, a + rng.randint(1, 3))])
            features.append({"example_id": f"z{e}", "cls_index": 0, "offset_mapping": [NONE, NONE] + offsets})
    start, end = random_logits(rng, np_rng, features)
    for n_best in (1, 2, 3, 5, 30):
        config = PostprocessConfig(n_best_size=n_best, max_answer_length=rng.choice([3, 8, 30]))
        check(examples, features, start, end, config, f"seed {seed} n_best {n_best}")


def test_enormous_and_tied_logits_keep_the_documented_order():
    """Scores near the float64 limit and many exact ties must still sort by score, then offsets."""
    rng, np_rng = random.Random(3), np.random.default_rng(3)
    examples = [{"id": f"h{e}", "context": "가나다라"} for e in range(1500)]
    features = [
        {"example_id": f"h{e}", "cls_index": 0, "offset_mapping": [NONE, [0, 1], [1, 3], [3, 4]]} for e in range(1500)
    ]
    start, end = np_rng.integers(-3, 4, (1500, 4)) * 1e307, np_rng.integers(-3, 4, (1500, 4)) * 1e307
    check(examples, features, start, end, PostprocessConfig(n_best_size=rng.choice([2, 4])))


@pytest.mark.parametrize("seed", range(8))
def test_datasets_input_matches_list_input(seed):
    datasets = pytest.importorskip("datasets")
    from datasets import Features, Sequence, Value

    rng, np_rng = random.Random(100 + seed), np.random.default_rng(100 + seed)
    examples, features, start, end = random_case(rng, np_rng)
    config = random_config(rng, version_2=seed % 2 == 0)
    schema = Features(
        {
            "example_id": Value("string"),
            "cls_index": Value("int32"),
            "offset_mapping": Sequence(Sequence(Value("int64"), length=2)),
        }
    )
    feature_ds = datasets.Dataset.from_dict({k: [f[k] for f in features] for k in schema}, features=schema)
    example_ds = datasets.Dataset.from_list(examples)
    want = reference_postprocess(examples, features, start, end, config)
    assert_matches_reference(decode_answers(example_ds, feature_ds, start, end, config), want)
    # A permuted view (select) reads the rows in the new order.
    order = list(range(len(features)))[::-1]
    got = decode_answers(example_ds, feature_ds.select(order), start[order], end[order], config)
    assert_matches_reference(
        got, reference_postprocess(examples, [features[i] for i in order], start[order], end[order], config)
    )
    # A contiguous shard is a slice of the Arrow table.
    if len(features) >= 2:
        shard = feature_ds.shard(2, 1, contiguous=True)
        first = len(features) - len(shard)
        rows = list(range(first, len(features)))
        got = decode_answers(example_ds, shard, start[rows], end[rows], config)
        assert_matches_reference(got, reference_postprocess(examples, features[first:], start[rows], end[rows], config))


def test_many_examples_and_long_windows_match_reference():
    """Realistic sizes (384-token windows, n_best 20): hundreds of examples and windows, windows with
    many valid pairs, and an example's windows far apart in the features."""
    rng, np_rng = random.Random(7), np.random.default_rng(7)
    examples, features = [], []
    for e in range(300):
        n_tokens = rng.randint(300, 700)
        context = "".join(chr(rng.randint(0xAC00, 0xD7A3)) for _ in range(n_tokens * 2))
        offsets = [[2 * t, 2 * t + 2] for t in range(n_tokens)]
        examples.append({"id": f"q{e}", "context": context})
        for lo in range(0, n_tokens, 170):
            features.append(
                {"example_id": f"q{e}", "cls_index": 0, "offset_mapping": [NONE] * 14 + offsets[lo : lo + 360] + [NONE]}
            )
            if lo + 360 >= n_tokens:
                break
    order = list(range(len(features)))
    rng.shuffle(order)
    features = [features[i] for i in order]
    start = np_rng.normal(0, 1, (len(features), 384)).astype(np.float32)
    end = np_rng.normal(0, 1, (len(features), 384)).astype(np.float32)
    # A peak near one place in half the windows: many valid pairs in one window.
    for f in range(0, len(features), 2):
        peak = rng.randint(20, 300)
        start[f, peak - 10 : peak + 10] += 6
        end[f, peak - 5 : peak + 20] += 6
    check(examples, features, start, end, PostprocessConfig())


# --------------------------------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------------------------------

CONTEXT = "서울은 한국의 수도이다"  # 서울은(0-3) 한국의(4-7) 수도이다(8-12)
CONTEXT_TOKENS = [[0, 2], [2, 3], [4, 6], [6, 7], [8, 10], [10, 12]]  # 서울 은 한국 의 수도 이다


def one_window(start_at: dict[int, float], end_at: dict[int, float], *, width=None, question_tokens=2):
    """One example, one window [CLS] q.. [SEP] context [SEP]; logits 0 except the given positions."""
    offsets = [NONE] + [NONE] * question_tokens + [NONE] + CONTEXT_TOKENS + [NONE]
    width = width or len(offsets)
    start, end = np.zeros((1, width), np.float32), np.zeros((1, width), np.float32)
    for i, v in start_at.items():
        start[0, i] = v
    for i, v in end_at.items():
        end[0, i] = v
    features = [{"example_id": "a", "cls_index": 0, "offset_mapping": offsets}]
    return [{"id": "a", "context": CONTEXT}], features, start, end


def test_question_and_special_tokens_are_never_chosen():
    # Positions 0-3 are [CLS], two question tokens and [SEP]; 10 is the final [SEP].
    examples, features, start, end = one_window(
        {0: 50, 1: 40, 2: 40, 3: 30, 10: 60, 8: 2}, {0: 50, 2: 40, 3: 30, 10: 60, 8: 2}
    )
    prediction = decode_answers(examples, features, start, end)["a"]
    assert (prediction.text, prediction.start, prediction.end) == ("수도", 8, 10)
    for span in prediction.nbest:
        assert span.start >= 0 and CONTEXT[span.start : span.end] == span.text


def test_end_before_start_is_discarded():
    # The best start (이다, token 9) comes after the best end (한국, token 6).
    examples, features, start, end = one_window({9: 10, 4: 1}, {6: 10, 9: 1})
    prediction = decode_answers(examples, features, start, end, PostprocessConfig(n_best_size=2))["a"]
    # Pairs: (이다, 한국) ends first: dropped; (서울, 한국) = 11 and (이다, 이다) = 11 tie → by offsets;
    # (서울, 이다) = 2 falls outside the 2-best.
    assert [(s.start, s.end) for s in prediction.nbest] == [(0, 6), (10, 12)]
    assert prediction.text == "서울은 한국"


def test_spans_longer_than_max_answer_length_are_discarded():
    # Best pair 서울(4) … 이다(9) is 6 tokens long.
    examples, features, start, end = one_window({4: 10, 8: 1}, {9: 10, 8: 1})
    long_ok = decode_answers(examples, features, start, end, PostprocessConfig(max_answer_length=6))["a"]
    assert long_ok.text == CONTEXT
    short = decode_answers(examples, features, start, end, PostprocessConfig(max_answer_length=2))["a"]
    assert short.text == "수도이다"  # tokens 8..9: 1 + 10
    token_starting_at = {a: i for i, (a, _) in enumerate(CONTEXT_TOKENS)}
    token_ending_at = {b: i for i, (_, b) in enumerate(CONTEXT_TOKENS)}
    assert short.nbest and all(token_ending_at[s.end] - token_starting_at[s.start] + 1 <= 2 for s in short.nbest)
    assert CONTEXT not in [s.text for s in short.nbest]


def test_a_pair_covering_no_character_never_displaces_a_real_span():
    """Token 3 is zero-width (as byte-level tokenizers produce) and holds the best start and end logit:
    the pair (3, 3) scores highest but covers nothing, so the 3-best list holds the next three."""
    context = "가나다라마바"
    offsets = [NONE, [0, 1], [1, 2], [2, 2], [2, 3], [3, 4]]
    features = [{"example_id": "z", "cls_index": 0, "offset_mapping": offsets}]
    start = np.array([[0, 1, 2, 9, 0, 0]], np.float32)  # the best starts: tokens 1, 2, 3
    end = np.array([[0, 0, 0, 9, 2, 1]], np.float32)  # the best ends: tokens 3, 4, 5
    prediction = decode_answers(
        [{"id": "z", "context": context}], features, start, end, PostprocessConfig(n_best_size=3)
    )["z"]
    assert [(s.text, s.score) for s in prediction.nbest] == [("나", 11.0), ("다", 11.0), ("가나", 10.0)]


def test_best_span_comes_from_the_right_window_with_offsets_in_the_original_context():
    context = "가나다라마바사아자차카타파하"  # one token per character
    tokens = [[i, i + 1] for i in range(len(context))]
    features = [
        {"example_id": "w", "cls_index": 0, "offset_mapping": [NONE, NONE] + tokens[0:6] + [NONE]},
        {"example_id": "w", "cls_index": 0, "offset_mapping": [NONE, NONE] + tokens[4:10] + [NONE]},
        {"example_id": "w", "cls_index": 0, "offset_mapping": [NONE, NONE] + tokens[8:14] + [NONE]},
    ]
    start, end = np.zeros((3, 10), np.float32), np.zeros((3, 10), np.float32)
    start[2, 2 + 2], end[2, 2 + 4] = 5.0, 5.0  # window 2: context tokens 10..12 → "카타파"
    start[0, 2 + 1], end[0, 2 + 2] = 4.0, 4.0  # window 0: "나다", worse
    prediction = decode_answers([{"id": "w", "context": context}], features, start, end)["w"]
    assert (prediction.text, prediction.start, prediction.end) == ("카타파", 10, 13)
    assert prediction.score == pytest.approx(10.0)
    assert prediction.nbest[1].text == "나다"


def test_span_seen_in_two_windows_is_listed_once_with_its_best_score():
    context = "가나다라마바"
    tokens = [[i, i + 1] for i in range(6)]
    features = [
        {"example_id": "d", "cls_index": 0, "offset_mapping": [NONE] + tokens[0:4]},
        {"example_id": "d", "cls_index": 0, "offset_mapping": [NONE] + tokens[2:6]},
    ]
    start, end = np.full((2, 5), -5.0), np.full((2, 5), -5.0)
    start[0, 3], end[0, 4] = 1.0, 1.0  # "다라" in window 0 (tokens 2..3): score 2
    start[1, 1], end[1, 2] = 2.0, 2.0  # "다라" in window 1 (tokens 0..1): score 4
    prediction = decode_answers([{"id": "d", "context": context}], features, start, end)["d"]
    texts = [s.text for s in prediction.nbest]
    assert texts.count("다라") == 1
    span = prediction.nbest[0]
    assert (span.text, span.score, span.start_logit, span.end_logit) == ("다라", 4.0, 2.0, 2.0)


def test_equal_best_scores_take_the_logits_of_the_earliest_window():
    context = "가나"
    features = [{"example_id": "t", "cls_index": 0, "offset_mapping": [NONE, [0, 1], [1, 2]]} for _ in range(2)]
    start = np.array([[0, 3.0, -9], [0, 1.0, -9]])
    end = np.array([[0, -9, 1.0], [0, -9, 3.0]])  # "가나" scores 4 in both windows
    span = decode_answers([{"id": "t", "context": context}], features, start, end)["t"].nbest[0]
    assert (span.text, span.start_logit, span.end_logit) == ("가나", 3.0, 1.0)


def test_korean_text_comes_back_as_a_context_slice_without_wordpiece_artefacts(tiny_tokenizer, korean_examples):
    examples, features, logits = [], [], []
    for ex in korean_examples:
        enc = tiny_tokenizer(ex["question"], ex["context"], return_offsets_mapping=True)
        sequence_ids = enc.sequence_ids()
        offsets = [list(o) if s == 1 else NONE for o, s in zip(enc["offset_mapping"], sequence_ids)]
        answer = ex["answers"]["text"][0]
        a_start = ex["answers"]["answer_start"][0]
        start, end = np.zeros(len(offsets)), np.zeros(len(offsets))
        # Point the logits at the tokens covering the gold answer.
        s_tok = next(i for i, o in enumerate(offsets) if o[0] <= a_start < o[1])
        e_tok = next(i for i, o in enumerate(offsets) if o[0] < a_start + len(answer) <= o[1])
        start[s_tok], end[e_tok] = 8.0, 8.0
        assert any("##" in t for t in tiny_tokenizer.convert_ids_to_tokens(enc["input_ids"]))
        examples.append({"id": ex["id"], "context": ex["context"]})
        features.append({"example_id": ex["id"], "cls_index": 0, "offset_mapping": offsets})
        logits.append((start, end))
    width = max(len(f["offset_mapping"]) for f in features)
    start = np.stack([np.pad(s, (0, width - len(s))) for s, _ in logits])
    end = np.stack([np.pad(e, (0, width - len(e))) for _, e in logits])
    predictions = decode_answers(examples, features, start, end)
    for ex in korean_examples:
        prediction = predictions[ex["id"]]
        assert prediction.text == ex["answers"]["text"][0]
        assert prediction.start == ex["answers"]["answer_start"][0]
        for span in prediction.nbest:
            assert "##" not in span.text and span.text == ex["context"][span.start : span.end]


def test_version_2_null_answer_follows_the_threshold():
    # CLS (position 0) scores 3 + 3 = 6; the best span 수도 scores 2.5 + 2.5 = 5.
    examples, features, start, end = one_window({0: 3.0, 8: 2.5}, {0: 3.0, 8: 2.5})
    config = PostprocessConfig(version_2_with_negative=True, answer_boundaries="off")  # rule 4's softmax as it is
    null_wins = decode_answers(examples, features, start, end, config)["a"]
    assert (null_wins.text, null_wins.start, null_wins.end, null_wins.score) == ("", 0, 0, 6.0)
    assert null_wins.null_score == 6.0 and null_wins.nbest[0].text == "수도"
    assert null_wins.null_odds == pytest.approx(1.0)
    # Probabilities share their mass with the null score.
    null_probability = 1.0 - sum(s.probability for s in null_wins.nbest)
    span_mass = sum(math.exp(s.score) for s in null_wins.nbest)
    assert null_probability == pytest.approx(math.exp(6) / (math.exp(6) + span_mass))
    span_wins = decode_answers(
        examples, features, start, end, PostprocessConfig(version_2_with_negative=True, null_score_diff_threshold=1.0)
    )["a"]
    assert span_wins.text == "수도"  # 6 - 5 = 1 is not greater than the threshold 1.0
    plain = decode_answers(examples, features, start, end)["a"]
    assert plain.text == "수도" and plain.null_score is None
    assert sum(s.probability for s in plain.nbest) == pytest.approx(1.0)


def test_version_2_null_score_is_the_minimum_over_windows_and_uses_cls_index():
    context = "가나다라"
    tokens = [[i, i + 1] for i in range(4)]
    features = [
        {"example_id": "n", "offset_mapping": [NONE] + tokens[:3] + [NONE], "cls_index": 4},
        {"example_id": "n", "offset_mapping": [NONE] + tokens[1:] + [NONE], "cls_index": 0},
        {"example_id": "n", "offset_mapping": [], "cls_index": 0},
    ]  # no token: no null score
    start, end = np.zeros((3, 5)), np.zeros((3, 5))
    start[0, 4], end[0, 4] = 1.0, 2.0  # window 0 null: 3 (at its cls_index 4)
    start[1, 0], end[1, 0] = 0.5, 0.25  # window 1 null: 0.75
    start[0, 0], end[0, 0] = -9.0, -9.0  # token 0 of window 0 is not its CLS: ignored
    start[2, 0], end[2, 0] = -9.0, -9.0  # past window 2's zero length: ignored
    prediction = decode_answers(
        [{"id": "n", "context": context}], features, start, end, PostprocessConfig(version_2_with_negative=True)
    )["n"]
    assert prediction.null_score == pytest.approx(0.75) and prediction.cls_score == prediction.null_score
    # Without SQuAD 2.0 the same minimum is reported as cls_score and does not compete.
    plain = decode_answers([{"id": "n", "context": context}], features, start, end)["n"]
    assert plain.null_score is None and plain.cls_score == pytest.approx(0.75) and plain.text != ""
    # There a CLS position outside its window, or a masked one, only leaves the window without a score.
    features[1]["cls_index"] = 9
    assert decode_answers([{"id": "n", "context": context}], features, start, end)["n"].cls_score == 3.0
    config = PostprocessConfig(version_2_with_negative=True)
    with pytest.raises(ValueError, match="outside its 5 tokens"):
        decode_answers([{"id": "n", "context": context}], features, start, end, config)
    features[1]["cls_index"], start[0, 4] = 0, -np.inf  # window 0 masked: window 1's score stands
    assert decode_answers([{"id": "n", "context": context}], features, start, end)["n"].cls_score == 0.75
    start[1, 0] = np.nan
    assert decode_answers([{"id": "n", "context": context}], features, start, end)["n"].cls_score is None


def test_version_2_needs_the_cls_index_column():
    datasets = pytest.importorskip("datasets")
    examples, features, start, end = one_window({8: 1.0}, {8: 1.0})
    del features[0]["cls_index"]
    config = PostprocessConfig(version_2_with_negative=True)
    with pytest.raises(ValueError, match="features row 0 has no 'cls_index' key"):
        decode_answers(examples, features, start, end, config)
    with pytest.raises(ValueError, match="features have no 'cls_index' column"):
        decode_answers(examples, datasets.Dataset.from_list(features), start, end, config)
    plain = decode_answers(examples, features, start, end)["a"]  # not needed otherwise
    assert plain.text == "수도" and plain.cls_score is None


def test_examples_without_windows_or_spans_are_answered_empty_and_counted(caplog):
    examples = [
        {"id": "has", "context": CONTEXT},
        {"id": "none", "context": "없음"},
        {"id": "empty", "context": "가나"},
    ]
    features = [
        {"example_id": "has", "cls_index": 0, "offset_mapping": [NONE] + CONTEXT_TOKENS},
        {"example_id": "empty", "cls_index": 0, "offset_mapping": [NONE, NONE, NONE]},
    ]  # no context token
    start, end = np.zeros((2, 7)), np.zeros((2, 7))
    start[0, 5], end[0, 5] = 3.0, 3.0
    with caplog.at_level(logging.INFO, logger="kqa.postprocess"):
        predictions, report = decode_answers_with_report(examples, features, start, end)
    assert list(predictions) == ["has", "none", "empty"]
    assert predictions["has"].text == "수도"
    for example_id in ("none", "empty"):
        p = predictions[example_id]
        assert (p.text, p.start, p.end, p.nbest, p.score) == ("", 0, 0, [], -math.inf)
    assert (report.num_examples, report.num_features) == (3, 2)
    assert report.examples_without_features == 1 and report.examples_without_features_ids == ["none"]
    assert report.examples_without_span == 1 and report.examples_without_span_ids == ["empty"]
    assert "1 examples have no window and 1 have no valid span" in caplog.text
    assert "post-processed 3 examples from 2 windows" in caplog.text


@pytest.mark.parametrize("last", ["no context", "normal"])
def test_a_short_window_without_context_tokens_may_come_last(last):
    """An example whose context the tokenizer reduces to nothing gets a short window of special and
    question tokens only ([CLS] q [SEP] [SEP]); it is answered "" and counted, wherever it comes."""
    examples = [{"id": "full", "context": CONTEXT}, {"id": "blank", "context": "\u200b\u200b"}]
    full = {"example_id": "full", "cls_index": 0, "offset_mapping": [NONE] * 8 + CONTEXT_TOKENS + [NONE]}
    blank = {"example_id": "blank", "cls_index": 0, "offset_mapping": [NONE] * 4}
    features = [full, blank] if last == "no context" else [blank, full]
    start, end = np.zeros((2, 15), np.float32), np.zeros((2, 15), np.float32)
    start[features.index(full), 12] = end[features.index(full), 13] = 5.0
    for config in (PostprocessConfig(), PostprocessConfig(version_2_with_negative=True)):
        predictions, report = decode_answers_with_report(examples, features, start, end, config)
        assert predictions["full"].text == "수도이다"
        assert (predictions["blank"].text, predictions["blank"].nbest) == ("", [])
        assert report.examples_without_span_ids == ["blank"]


@pytest.mark.parametrize("layout", ["only", "first", "last"])
def test_a_window_without_any_token_is_answered_empty(layout):
    """A feature with an empty offset_mapping has no token at all (and no null score)."""
    examples = [{"id": "full", "context": CONTEXT}, {"id": "zero", "context": "가"}]
    full = {"example_id": "full", "cls_index": 0, "offset_mapping": [NONE] + CONTEXT_TOKENS}
    zero = {"example_id": "zero", "cls_index": 0, "offset_mapping": []}
    features = {"only": [zero], "first": [zero, full], "last": [full, zero]}[layout]
    width = 0 if layout == "only" else 7
    start, end = np.zeros((len(features), width)), np.zeros((len(features), width))
    if layout != "only":
        start[features.index(full), 5] = end[features.index(full), 5] = 3.0
    for config in (PostprocessConfig(), PostprocessConfig(version_2_with_negative=True)):
        predictions, report = decode_answers_with_report(examples, features, start, end, config)
        zero_prediction = predictions["zero"]
        assert (zero_prediction.text, zero_prediction.nbest, zero_prediction.null_score) == ("", [], None)
        assert report.examples_without_span_ids == ["zero"]
        if layout == "only":
            assert report.examples_without_features_ids == ["full"]
        else:
            assert predictions["full"].text == "수도"


def test_no_features_at_all():
    predictions, report = decode_answers_with_report(
        [{"id": "x", "context": "가"}], [], np.zeros((0, 4)), np.zeros((0, 4))
    )
    assert predictions["x"].text == "" and report.examples_without_features == 1


def test_float16_logits_and_wide_padding_are_accepted():
    examples, features, start, end = one_window({8: 4.0}, {9: 4.0}, width=64)
    start[0, 20:], end[0, 20:] = 1000.0, 1000.0  # past the window's 11 tokens
    prediction = decode_answers(examples, features, start.astype(np.float16), end.astype(np.float16))["a"]
    assert prediction.text == "수도이다"


def test_equal_logits_give_a_deterministic_documented_order():
    # All logits equal: top-n keeps the lowest token indices; equal scores sort by character offsets.
    examples, features, start, end = one_window({}, {})
    config = PostprocessConfig(n_best_size=3, max_answer_length=2, answer_boundaries="off")
    prediction = decode_answers(examples, features, start, end, config)["a"]
    # Context tokens 4, 5, 6 (서울, 은, 한국) are the top 3 starts and ends.
    assert [(s.start, s.end) for s in prediction.nbest] == [(0, 2), (0, 3), (2, 3)]
    assert [s.probability for s in prediction.nbest] == pytest.approx([1 / 3] * 3)


def test_none_offsets_mark_non_context_tokens():
    examples, features, start, end = one_window({8: 1.0, 1: 9.0}, {8: 1.0, 1: 9.0})
    features[0]["offset_mapping"] = [None if o == NONE else o for o in features[0]["offset_mapping"]]
    assert decode_answers(examples, features, start, end)["a"].text == "수도"
    datasets = pytest.importorskip("datasets")
    as_dataset = datasets.Dataset.from_list(features)  # Arrow nulls inside the offsets column
    assert decode_answers(examples, as_dataset, start, end)["a"].text == "수도"


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors():
    examples, features, start, end = one_window({8: 1.0}, {8: 1.0})
    version_2 = PostprocessConfig(version_2_with_negative=True)
    with pytest.raises(ValueError, match="window 0 belongs to example 'zzz'"):
        decode_answers(examples, [{"example_id": "zzz", "offset_mapping": [[0, 1]]}], start, end)
    with pytest.raises(ValueError, match="start_logits has 2 rows but there are 1 features"):
        decode_answers(examples, features, np.zeros((2, 11)), end)
    with pytest.raises(ValueError, match="has 5 positions but a feature has 11 tokens"):
        decode_answers(examples, features, start[:, :5], end[:, :5])
    with pytest.raises(ValueError, match="start_logits must be a floating point .* array, got int32"):
        decode_answers(examples, features, start.astype(np.int32), end)
    bad_start = start.copy()
    bad_start[0, 6] = np.nan
    with pytest.raises(ValueError, match="window 0 .*start logits hold nan"):
        decode_answers(examples, features, bad_start, end)
    bad_end = end.copy()
    bad_end[0, 7] = np.inf
    with pytest.raises(ValueError, match="window 0 .*end logits hold inf"):
        decode_answers(examples, features, start, bad_end)
    broken = [{"example_id": "a", "offset_mapping": [NONE, [5, 99]]}]
    with pytest.raises(ValueError, match=r"window 0 \(example 'a'\) token 1 has offsets \[5, 99\]"):
        decode_answers(examples, broken, start, end)
    with pytest.raises(ValueError, match="token 1 has offsets"):
        decode_answers(examples, [{"example_id": "a", "offset_mapping": [NONE, [4, 2]]}], start, end)
    with pytest.raises(ValueError, match="window 0 offset_mapping is not a list of"):
        decode_answers(examples, [{"example_id": "a", "offset_mapping": [[1, 2, 3]]}], start, end)
    with pytest.raises(ValueError, match="id 'a' appears twice"):
        decode_answers(examples * 2, features, start, end)
    with pytest.raises(ValueError, match="has a context of type NoneType"):
        decode_answers([{"id": "a", "context": None}], features, start, end)
    with pytest.raises(ValueError, match="examples row 0 has no 'context' key"):
        decode_answers([{"id": "a"}], features, start, end)
    cls_inf = start.copy()
    cls_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="window 0: the null .CLS. score is inf"):
        decode_answers(examples, features, cls_inf, end, version_2)
    with pytest.raises(ValueError, match="start_logits has 3 rows but there are 0 features"):
        decode_answers(examples, [], np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="window 0 has cls_index 11 outside its 11 tokens"):
        decode_answers(examples, [dict(features[0], cls_index=11)], start, end, version_2)
    with pytest.raises(ValueError, match="n_best_size must be >= 1"):
        PostprocessConfig(n_best_size=0)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def test_write_predictions_round_trip(tmp_path):
    examples, features, start, end = one_window({8: 2.0, 4: 1.0}, {9: 2.0, 5: 1.0})
    examples.append({"id": "b", "context": "없다"})
    predictions = decode_answers(examples, features, start, end, PostprocessConfig(n_best_size=3))
    paths = write_predictions(predictions, tmp_path / "out", prefix="dev")
    assert set(paths) == {"predictions", "nbest"}
    assert paths["predictions"].name == "dev_predictions.json"
    raw = paths["predictions"].read_text(encoding="utf-8")
    assert "수도이다" in raw  # UTF-8, not \\u escapes
    assert json.loads(raw) == {"a": "수도이다", "b": ""}
    nbest = json.loads(paths["nbest"].read_text(encoding="utf-8"))
    assert nbest["b"] == []
    want = [(s.text, s.start, s.end) for s in predictions["a"].nbest]
    assert [(d["text"], d["start"], d["end"]) for d in nbest["a"]] == want
    assert nbest["a"][0]["score"] == pytest.approx(4.0)
    assert set(nbest["a"][0]) == {"text", "start", "end", "score", "probability", "start_logit", "end_logit"}


def test_write_predictions_version_2_writes_null_odds(tmp_path):
    examples, features, start, end = one_window({0: 3.0, 8: 2.5}, {0: 3.0, 8: 2.5})
    examples.append({"id": "b", "context": "없다"})
    config = PostprocessConfig(version_2_with_negative=True)
    predictions = decode_answers(examples, features, start, end, config)
    paths = write_predictions(predictions, tmp_path)
    assert paths["null_odds"].name == "null_odds.json"
    odds = json.loads(paths["null_odds"].read_text(encoding="utf-8"))
    assert odds["a"] == pytest.approx(1.0)
    assert odds["b"] == math.inf  # no span at all: certainly null
    assert json.loads(paths["predictions"].read_text(encoding="utf-8")) == {"a": "", "b": ""}


def test_benchmark_script_runs_and_agrees_with_its_reference(tmp_path):
    """The benchmark asserts identical outputs of kqa and its per-pair loop before timing anything."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_postprocess.py"
    spec = importlib.util.spec_from_file_location("bench_postprocess", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "results.json"
    for logits in ("gaussian", "peaked"):
        assert (
            bench.main(
                [
                    "--num-examples",
                    "12",
                    "--windows",
                    "3",
                    "--seq-len",
                    "64",
                    "--n-best",
                    "5",
                    "--max-answer-length",
                    "4",
                    "--repeat",
                    "1",
                    "--logits",
                    logits,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        results = json.loads(out.read_text(encoding="utf-8"))
        assert {(r["inputs"], r["implementation"]) for r in results["results"]} == {
            (i, impl) for i in ("lists", "datasets") for impl in ("reference per-pair loop", "kqa vectorised")
        }
        assert results["settings"]["num_features"] == 36
    # A copy of the module, timed next to kqa (its outputs must equal kqa's), without the per-pair loop.
    copy = tmp_path / "copy_of_postprocess.py"
    copy.write_text((script.parents[1] / "kqa" / "postprocess.py").read_text(encoding="utf-8"), encoding="utf-8")
    assert (
        bench.main(
            [
                "--num-examples",
                "12",
                "--windows",
                "3",
                "--seq-len",
                "64",
                "--repeat",
                "1",
                "--inputs",
                "datasets",
                "--no-reference",
                "--variant",
                str(copy),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [r["implementation"] for r in rows] == ["kqa vectorised", "variant copy_of_postprocess"]
