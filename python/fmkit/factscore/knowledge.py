"""The knowledge source: a SQLite `documents(title PRIMARY KEY, text)` table built from local
`{title, text}` JSONL, each article stored as its list of <= max_tokens-token passages."""
from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import Iterable

_WORD = re.compile(r"\S+")


def token_starts(text: str, tokenizer=None) -> list[int]:
    """Character offset where each token starts: whitespace words without a tokenizer, else the
    tokenizer's offsets (no special tokens; a fast tokenizer is needed for offsets)."""
    if tokenizer is None:
        return [m.start() for m in _WORD.finditer(text)]
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise TypeError("tokenizer: expected a fast (Rust) Hugging Face tokenizer, which reports offsets") from None
    return [s for s, e in enc["offset_mapping"] if e > s] if enc["offset_mapping"] else []


def chunk_sections(sections: list[str], tokenizer=None, max_tokens: int = 256) -> list[str]:
    """Packs the sections' tokens greedily into passages of <= max_tokens tokens; a section that
    overflows the current passage fills it and continues in new passages. Passages are slices of
    the original text (not decoded tokens), so one section's pieces concatenate back to it exactly;
    pieces of different sections inside one passage are joined by a space."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected a positive integer, got {max_tokens!r}")
    passages: list[str] = []
    current, used = [], 0
    for section in sections:
        starts = token_starts(section, tokenizer)
        pos = 0
        while pos < len(starts):
            take = min(max_tokens - used, len(starts) - pos)
            begin = 0 if pos == 0 else starts[pos]
            end = starts[pos + take] if pos + take < len(starts) else len(section)
            current.append(section[begin:end])
            used += take
            pos += take
            if used == max_tokens:
                passages.append(" ".join(current))
                current, used = [], 0
    if current:
        passages.append(" ".join(current))
    return passages


def _sections(record, line_no: int, path: str) -> tuple[str, list[str]]:
    if not isinstance(record, dict) or "title" not in record or "text" not in record:
        raise ValueError(f"{path}:{line_no}: expected a JSON object with 'title' and 'text'")
    title, text = record["title"], record["text"]
    if not isinstance(title, str) or not title:
        raise ValueError(f"{path}:{line_no}: 'title' must be a non-empty string")
    if isinstance(text, str):
        return title, [text]
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        return title, text
    raise ValueError(f"{path}:{line_no}: 'text' must be a string or a list of strings")


class KnowledgeSource:
    """Articles by title, each a list of passages. `build` writes the SQLite file; opening an
    existing file reads it; `from_records(..., db_path=":memory:")` keeps everything in memory."""

    def __init__(self, db_path: str):
        if db_path != ":memory:" and not os.path.isfile(db_path):
            raise FileNotFoundError(f"knowledge source: no such file: {db_path!r} (build it with "
                                    f"KnowledgeSource.build or `fmkit factscore build-db`)")
        self.db_path = db_path
        self.connection = sqlite3.connect(db_path, check_same_thread=False)
        self._cache: dict[str, list[dict]] = {}

    @classmethod
    def from_records(cls, records: Iterable[dict], db_path: str = ":memory:", tokenizer=None,
                     max_tokens: int = 256, source: str = "records") -> "KnowledgeSource":
        if db_path != ":memory:" and os.path.exists(db_path):
            raise FileExistsError(f"db_path: {db_path!r} already exists; remove it or choose another path")
        ks = cls.__new__(cls)
        ks.db_path, ks._cache = db_path, {}
        ks.connection = sqlite3.connect(db_path, check_same_thread=False)
        with ks.connection:
            ks.connection.execute("CREATE TABLE documents (title TEXT PRIMARY KEY, text TEXT)")
            for i, record in enumerate(records, 1):
                title, sections = _sections(record, i, source)
                passages = chunk_sections(sections, tokenizer, max_tokens)
                # duplicate titles: the first article wins (upstream skips later ones)
                ks.connection.execute("INSERT OR IGNORE INTO documents VALUES (?, ?)", (title, json.dumps(passages)))
        return ks

    @classmethod
    def build(cls, jsonl: str, db_path: str = ":memory:", tokenizer=None, max_tokens: int = 256) -> "KnowledgeSource":
        """From a JSONL file of {"title": str, "text": str | [str, ...]} lines."""
        def records():
            with open(jsonl, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise ValueError(f"{jsonl}:{i}: not valid JSON ({exc.msg})") from None
        return cls.from_records(records(), db_path, tokenizer, max_tokens, jsonl)

    def titles(self) -> list[str]:
        return [r[0] for r in self.connection.execute("SELECT title FROM documents ORDER BY title")]

    def __len__(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def __contains__(self, title: str) -> bool:
        return self.connection.execute("SELECT 1 FROM documents WHERE title = ?", (title,)).fetchone() is not None

    def get_passages(self, title: str) -> list[dict]:
        """[{"title", "text"}] of the article whose title equals `title` (KeyError if none)."""
        if title not in self._cache:
            row = self.connection.execute("SELECT text FROM documents WHERE title = ?", (title,)).fetchone()
            if row is None:
                raise KeyError(f"topic {title!r} is not in the knowledge source {self.db_path!r} "
                               f"({len(self)} articles); the topic must equal an article title")
            texts = [t.replace("<s>", "").replace("</s>", "").strip() for t in json.loads(row[0])]
            self._cache[title] = [{"title": title, "text": t} for t in texts]
        return self._cache[title]

    def close(self) -> None:
        self.connection.close()
