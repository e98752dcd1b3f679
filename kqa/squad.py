"""The SQuAD JSON layout (`data` → `paragraphs` → `qas`), walked in one place.

Every reader of SQuAD-layout files — the training data loader (`kqa.data`), the official scorer
(`kqa.metric`), `kqa predict`'s question reader, the document loader of retrieval and the vocabulary
trimmer of the offline backbone — walks the file with these functions, so a layout problem reads the
same everywhere and names its record by its JSON path:

    corpus.json: data[1].paragraphs[0].qas[2]: a question must be an object, got str

The walk checks the layout only (objects and lists where the format has them); what a record must hold
(a non-blank context, an id, answers) is each reader's own business, and each raises its own error
type (`error=`), a subclass of ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

LAYOUT_HINT = "{'data': [{'paragraphs': [{'context': ..., 'qas': [...]}]}]}"


@dataclass(frozen=True)
class SquadPath:
    """Where a record sits in a SQuAD-layout file, written as its JSON path."""

    article: int
    paragraph: int | None = None
    question: int | None = None

    def child(self, index: int) -> SquadPath:
        """The path of an article's paragraph, or of a paragraph's question."""
        if self.paragraph is None:
            return SquadPath(self.article, index)
        return SquadPath(self.article, self.paragraph, index)

    def __str__(self) -> str:
        path = f"data[{self.article}]"
        if self.paragraph is not None:
            path += f".paragraphs[{self.paragraph}]"
        if self.question is not None:
            path += f".qas[{self.question}]"
        return path


@dataclass(frozen=True)
class SquadArticle:
    path: SquadPath
    article: dict[str, Any]

    @property
    def title(self) -> Any:
        return self.article.get("title")


@dataclass(frozen=True)
class SquadParagraph:
    path: SquadPath
    title: Any  # the article's title, as found (None when absent)
    paragraph: dict[str, Any]


@dataclass(frozen=True)
class SquadQuestion:
    path: SquadPath
    title: Any
    paragraph: dict[str, Any]
    qa: dict[str, Any]


def _kind(value: Any) -> str:
    return type(value).__name__


def squad_articles(document: Any, source: str, error: type[ValueError] = ValueError) -> Iterator[SquadArticle]:
    """The articles of a parsed SQuAD-layout document, each checked to be an object."""
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        if not isinstance(document, dict):
            got = f"a {_kind(document)}"
        elif "data" not in document:
            got = f"an object without 'data' (keys: {', '.join(map(repr, sorted(document))) or 'none'})"
        else:
            got = f"'data' as a {_kind(articles)}"
        raise error(
            f"{source}: not a SQuAD-format file: expected a JSON object with a 'data' list ({LAYOUT_HINT}), got {got}"
        )
    for index, article in enumerate(articles):
        path = SquadPath(index)
        if not isinstance(article, dict):
            raise error(f"{source}: {path}: an article must be an object, got {_kind(article)}")
        yield SquadArticle(path, article)


def _children(owner: dict, key: str, where: SquadPath, names: tuple[str, str], source: str, error):
    """`owner[key]`, which must be a list of objects: (path, object) pairs. `names`: what the owner and
    each child are called in an error (an article / a paragraph, a paragraph / a question)."""
    items = owner.get(key)
    if not isinstance(items, list):
        got = "none" if items is None else f"a {_kind(items)}"
        raise error(f"{source}: {where}: {names[0]} has no '{key}' list (got {got})")
    for index, item in enumerate(items):
        path = where.child(index)
        if not isinstance(item, dict):
            raise error(f"{source}: {path}: {names[1]} must be an object, got {_kind(item)}")
        yield path, item


def article_paragraphs(
    article: SquadArticle, source: str, error: type[ValueError] = ValueError
) -> Iterator[SquadParagraph]:
    """The paragraphs of one article, each checked to be an object."""
    names = ("an article", "a paragraph")
    for path, paragraph in _children(article.article, "paragraphs", article.path, names, source, error):
        yield SquadParagraph(path, article.title, paragraph)


def paragraph_questions(
    paragraph: SquadParagraph, source: str, error: type[ValueError] = ValueError
) -> Iterator[SquadQuestion]:
    """The questions of one paragraph, each checked to be an object."""
    names = ("a paragraph", "a question")
    for path, qa in _children(paragraph.paragraph, "qas", paragraph.path, names, source, error):
        yield SquadQuestion(path, paragraph.title, paragraph.paragraph, qa)


def squad_paragraphs(document: Any, source: str, error: type[ValueError] = ValueError) -> Iterator[SquadParagraph]:
    """Every paragraph of a parsed SQuAD-layout document, in file order."""
    for article in squad_articles(document, source, error):
        yield from article_paragraphs(article, source, error)


def squad_questions(document: Any, source: str, error: type[ValueError] = ValueError) -> Iterator[SquadQuestion]:
    """Every question of a parsed SQuAD-layout document, in file order."""
    for paragraph in squad_paragraphs(document, source, error):
        yield from paragraph_questions(paragraph, source, error)


def squad_document(rows: Iterable[dict[str, Any]], *, version: str, mark_impossible: bool = True) -> dict[str, Any]:
    """The other direction: flat rows (`id`, `title`, `context`, `question`, `answers` {text, answer_start},
    `is_impossible`) as a SQuAD-layout document, articles by title and paragraphs by context in first-seen
    order; `mark_impossible`: every question carries `is_impossible` (SQuAD 2.0)."""
    articles: dict[str, dict[str, list]] = {}
    for row in rows:
        qas = articles.setdefault(row.get("title") or "", {}).setdefault(row["context"], [])
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        qa = {
            "id": row["id"],
            "question": row["question"],
            "answers": [{"text": t, "answer_start": s} for t, s in zip(texts, starts)],
        }
        if mark_impossible:
            qa["is_impossible"] = bool(row.get("is_impossible"))
        qas.append(qa)
    data = [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()
    ]
    return {"version": version, "data": data}
