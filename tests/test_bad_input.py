"""Bad input files for the readers that have no test module of their own: `kqa predict --input`
(`kqa.cli.read_questions`) and, for the byte-order mark, `kqa.training.config.load_yaml`.

The rule: every reader either reads a file or raises a ValueError that names the file, the record
(line or data[a].paragraphs[p].qas[q]) and the problem; nothing is dropped silently. Every reader
accepts a UTF-8 byte-order mark at the start of a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kqa.cli import read_questions as _read_questions
from kqa.training.config import load_yaml

BOM = b"\xef\xbb\xbf"
CONTEXT = "대한민국의 수도는 서울이다."


def jsonl(tmp_path: Path, *lines: str | dict, name: str = "q.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line in lines),
        encoding="utf-8",
    )
    return path


def squad_file(tmp_path: Path, doc, name: str = "q.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def one_paragraph(*qas: dict, context=CONTEXT) -> dict:
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": list(qas)}]}]}


def raises_at(where: str, problem: str):
    """pytest.raises for a ValueError whose message starts with `where` and mentions `problem`."""
    return pytest.raises(ValueError, match=rf"^{re.escape(where)}.*{problem}")


# --- kqa predict --input: JSONL ---------------------------------------------------------------------


def test_jsonl_rows_are_read_with_line_numbers_as_default_ids(tmp_path):
    path = jsonl(
        tmp_path,
        {"id": "a", "question": "수도는?", "context": CONTEXT},
        "",
        {"question": "나라는?", "context": CONTEXT, "extra": 1},
        {"id": 7, "question": "?", "context": "x"},
    )
    rows = _read_questions(path)
    assert [r["id"] for r in rows] == ["a", "3", "7"]  # the blank line 2 is skipped but still counted
    assert rows[0] == {"id": "a", "question": "수도는?", "context": CONTEXT}


def test_jsonl_with_crlf_line_ends_reads_the_same(tmp_path):
    path = tmp_path / "crlf.jsonl"
    row = b'{"id": "%s", "question": "q", "context": "c"}'
    path.write_bytes(row % b"a" + b"\r\n\r\n" + row % b"b" + b"\r\n")
    assert [r["id"] for r in _read_questions(path)] == ["a", "b"]


def test_jsonl_invalid_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    good = json.dumps({"question": "q", "context": "c"}).encode()
    bad = b'{"question": "' + "수도".encode("cp949") + b'", "context": "c"}'  # a legacy Korean encoding
    path.write_bytes(good + b"\n" + good + b"\n" + bad + b"\n")
    with pytest.raises(ValueError) as err:
        _read_questions(path)
    assert not isinstance(err.value, UnicodeError)
    assert str(err.value).startswith(f"{path}:3: not UTF-8 text")
    assert "line 3, column 15" in str(err.value)


def test_jsonl_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + json.dumps({"id": "a", "question": "q", "context": "c"}).encode() + b"\n")
    assert _read_questions(path) == [{"id": "a", "question": "q", "context": "c"}]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["q", "c"]', "expected an object with 'question' and 'context'"),
        ('{"question": "q"}', "missing field 'context'"),
        ('{"context": "c"}', "missing field 'question'"),
        ('{"question": 3, "context": "c"}', r"field 'question': expected a string, got int"),
        ('{"question": "q", "context": null}', r"field 'context': expected a string, got NoneType"),
        ('{"question": "", "context": "c"}', r"field 'question' is empty"),
        ('{"question": "q", "context": " \\n "}', r"field 'context' is only whitespace"),
        (
            '{"question": "q", "context": "abc\\ud800"}',
            r"field 'context': holds a lone surrogate '\\ud800' at character 3",
        ),
        ('{"question": "q\\udc00", "context": "c"}', r"field 'question': holds a lone surrogate"),
        ('{"id": null, "question": "q", "context": "c"}', r"field 'id' must be a string or an integer, got NoneType"),
        ('{"id": ["x"], "question": "q", "context": "c"}', r"field 'id' must be a string or an integer, got list"),
        ('{"id": true, "question": "q", "context": "c"}', r"field 'id' must be a string or an integer, got bool"),
        ('{"id": " ", "question": "q", "context": "c"}', r"field 'id' is empty"),
        ('{"id": "x\\ud800", "question": "q", "context": "c"}', r"field 'id': holds a lone surrogate"),
    ],
)
def test_jsonl_malformed_row_names_the_file_line_and_problem(tmp_path, line, problem):
    path = jsonl(tmp_path, {"question": "fine", "context": "fine"}, line)
    with raises_at(f"{path}:2: ", problem):
        _read_questions(path)


def test_jsonl_duplicate_ids_name_both_lines(tmp_path):
    path = jsonl(
        tmp_path,
        {"id": "a", "question": "q", "context": "c"},
        {"id": "b", "question": "q", "context": "c"},
        {"id": "a", "question": "q2", "context": "c"},
    )
    with raises_at(f"{path}:3: ", "duplicate id 'a' .*first on line 1"):
        _read_questions(path)


def test_jsonl_default_id_that_collides_with_a_given_id_is_a_duplicate(tmp_path):
    path = jsonl(tmp_path, {"id": "2", "question": "q", "context": "c"}, {"question": "q", "context": "c"})
    with raises_at(f"{path}:2: ", "duplicate id '2'"):
        _read_questions(path)


def test_jsonl_without_any_question_is_an_error(tmp_path):
    with raises_at(f"{jsonl(tmp_path, '', '  ')}: ", "contains no questions"):
        _read_questions(tmp_path / "q.jsonl")


def test_uppercase_jsonl_suffix_is_read_as_jsonl(tmp_path):
    path = jsonl(
        tmp_path,
        {"id": "a", "question": "q", "context": "c"},
        {"id": "b", "question": "q", "context": "c"},
        name="Q.JSONL",
    )
    assert [r["id"] for r in _read_questions(path)] == ["a", "b"]


# --- kqa predict --input: SQuAD-layout JSON ---------------------------------------------------------


def test_squad_file_rows_with_default_ids(tmp_path):
    path = squad_file(
        tmp_path,
        one_paragraph(
            {"id": "q1", "question": "수도는?", "answers": []}, {"question": "나라는?"}, {"id": 5, "question": "?"}
        ),
    )
    assert _read_questions(path) == [
        {"id": "q1", "question": "수도는?", "context": CONTEXT},
        {"id": "0-0-1", "question": "나라는?", "context": CONTEXT},
        {"id": "5", "question": "?", "context": CONTEXT},
    ]


def test_squad_file_invalid_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "q.json"
    text = json.dumps(one_paragraph({"id": "q1", "question": "수도는?"}), ensure_ascii=False, indent=1)
    path.write_bytes(text.encode().replace("수도는?".encode(), "수도는?".encode("cp949")))
    with pytest.raises(ValueError) as err:
        _read_questions(path)
    assert not isinstance(err.value, UnicodeError)
    assert str(err.value).startswith(f"{path}: not UTF-8 text")
    line = text[: text.index("수도는?")].count("\n") + 1
    assert f"line {line}, column" in str(err.value)


def test_squad_file_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(BOM + json.dumps(one_paragraph({"id": "q1", "question": "q"})).encode())
    assert _read_questions(path) == [{"id": "q1", "question": "q", "context": CONTEXT}]


@pytest.mark.parametrize(
    ("doc", "where", "problem"),
    [
        ("{not json", "", "not valid JSON"),
        ([{"question": "q", "context": "c"}], "", r"not a SQuAD-format file"),
        ({"data": ["x"]}, "data[0]", "an article must be an object, got str"),
        ({"data": [{"title": "t"}]}, "data[0]", "has no 'paragraphs' list"),
        ({"data": [{"paragraphs": {"context": "c"}}]}, "data[0]", "has no 'paragraphs' list"),
        ({"data": [{"paragraphs": [["c"]]}]}, "data[0].paragraphs[0]", "a paragraph must be an object, got list"),
        ({"data": [{"paragraphs": [{"context": "c"}]}]}, "data[0].paragraphs[0]", "has no 'qas' list"),
        (one_paragraph("q"), "data[0].paragraphs[0].qas[0]", "a question must be an object, got str"),
        (one_paragraph({"id": "q1"}), "data[0].paragraphs[0].qas[0] (id 'q1')", "missing field 'question'"),
        (
            one_paragraph({"id": "q1", "question": 3}),
            "data[0].paragraphs[0].qas[0] (id 'q1')",
            "field 'question': expected a string, got int",
        ),
        (
            one_paragraph({"id": "q1", "question": " "}),
            "data[0].paragraphs[0].qas[0] (id 'q1')",
            "field 'question' is only whitespace",
        ),
        (
            one_paragraph({"id": "q1", "question": "q"}, context=None),
            "data[0].paragraphs[0]",
            "field 'context': expected a string, got NoneType",
        ),
        (one_paragraph({"id": "q1", "question": "q"}, context=""), "data[0].paragraphs[0]", "field 'context' is empty"),
        (
            one_paragraph({"id": "q1", "question": "q"}, context="abc\ud800"),
            "data[0].paragraphs[0]",
            r"field 'context': holds a lone surrogate '\\ud800' at character 3",
        ),
        (
            one_paragraph({"id": None, "question": "q"}),
            "data[0].paragraphs[0].qas[0]",
            "field 'id' must be a string or an integer, got NoneType",
        ),
        (
            one_paragraph({"id": "a", "question": "q"}, {"id": "a", "question": "q2"}),
            "data[0].paragraphs[0].qas[1]",
            r"duplicate id 'a' .*first at data\[0\]\.paragraphs\[0\]\.qas\[0\]",
        ),
        ({"data": []}, "", "contains no questions"),
    ],
)
def test_squad_file_malformed_record_names_the_file_record_and_problem(tmp_path, doc, where, problem):
    path = tmp_path / "q.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=True), encoding="utf-8")
    with raises_at(f"{path}: {where}", problem):
        _read_questions(path)


# --- kqa.training.config.load_yaml ----------------------------------------------------------------------------


def test_yaml_config_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(BOM + b"max_seq_length: 256\nlearning_rate: 3.0e-5\n")
    assert load_yaml(path) == {"max_seq_length": 256, "learning_rate": 3.0e-5}


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate.py", "--predictions", "{bad}", "--data_file", "{gold}"],
        ["-m", "kqa", "predict", "--model", "{tmp}", "--input", "{bad}"],
    ],
)
def test_entry_points_report_bad_input_in_one_line_and_exit_2(tmp_path, command):
    """A user's bad file is an error message naming it, not a traceback."""
    import subprocess
    import sys

    from kqa.testing import korean_squad_json

    root = Path(__file__).resolve().parent.parent
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"ko-1": "\xff"}')
    gold = tmp_path / "gold.json"
    gold.write_text(json.dumps(korean_squad_json(), ensure_ascii=False), encoding="utf-8")
    args = [a.format(bad=bad, gold=gold, tmp=tmp_path) for a in command]
    proc = subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"{bad}: not UTF-8 text" in proc.stderr


def test_make_tiny_model_names_the_record_of_a_squad_file_without_a_context(tmp_path, capsys):
    """`kqa make-tiny-model --text_from` reads SQuAD files through the corpus reader: a paragraph without
    a context is an error naming the file and the record (was: a bare KeyError traceback)."""
    from kqa.cli import main

    doc = {"data": [{"paragraphs": [{"context": CONTEXT, "qas": []}, {"qas": []}]}]}
    path = squad_file(tmp_path, doc)
    assert main(["make-tiny-model", "--output_dir", str(tmp_path / "m"), "--text_from", str(path)]) == 2
    err = capsys.readouterr().err
    assert "kqa make-tiny-model: error:" in err and f"{path}: data[0].paragraphs[1]" in err and "'context'" in err
    assert not (tmp_path / "m").exists()
