"""Read the raw corpora from a data directory laid out like ``shared/data``.

Only file reading and text assembly live here; tokenization and window sampling are
in ``corpora.py``.
"""

from __future__ import annotations

import bz2
import importlib.metadata as md
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ..errors import DataError

DATA_ENV = "PTQ161_DATA"
WIKITEXT2_DIR = "wikitext-2-raw-v1"
C4_VALID_2K = "c4/c4_validation_2k.parquet"
C4_VALID_HEAD = "c4/c4_valid_part_of_0.json"
C4_TRAIN_HEAD = "c4/c4_train_part_of_0.json"
GENSIM_WIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The data directory: ``data_dir`` if given, else ``$PTQ161_DATA``, else None."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data directory '{chosen}' does not exist")
    return path


def require_file(data_dir: Path | None, rel: str, what: str) -> Path:
    """``data_dir / rel`` or a ``DataError`` saying how to provide it."""
    if data_dir is None:
        raise DataError(f"{what} needs a data directory: pass --data-dir or set {DATA_ENV}")
    path = data_dir / rel
    if not path.is_file():
        raise DataError(f"{what}: file {path} not found")
    return path


def wikitext2_text(path: Path) -> str:
    """WikiText-2 raw split joined exactly as the hub dataset's rows are joined.

    Rows are the file's lines with their trailing newline; a blank line (" \\n") becomes
    the empty string; the text is ``"\\n\\n".join(rows)`` (GPTQ / OmniQuant protocol).
    """
    raw = path.read_text(encoding="utf-8")
    rows = [line if line.strip() else "" for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


def read_truncated_json_docs(path: Path) -> list[str]:
    """Texts of a file of concatenated JSON objects that may be cut off at the end."""
    raw = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    docs: list[str] = []
    pos = 0
    while True:
        while pos < len(raw) and raw[pos] in " \t\r\n,[]":
            pos += 1
        if pos >= len(raw):
            break
        try:
            obj, pos = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError:
            break  # the cut-off tail
        if isinstance(obj, dict) and "text" in obj:
            docs.append(obj["text"])
    if not docs:
        raise DataError(f"{path} holds no JSON documents with a 'text' field")
    return docs


def read_parquet_texts(path: Path) -> list[str]:
    """The ``text`` column of a parquet file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["text"])
    return [str(t) for t in table.column("text").to_pylist()]


_WIKI_MARKUP = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"\n{3,}"), "\n\n"),
]


def _strip_templates(text: str) -> str:
    """Remove (possibly nested) ``{{...}}`` templates and ``{|...|}`` tables."""
    out, depth, i = [], 0, 0
    while i < len(text):
        two = text[i : i + 2]
        if two in ("{{", "{|"):
            depth += 1
            i += 2
        elif two in ("}}", "|}") and depth:
            depth -= 1
            i += 2
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def strip_wiki_markup(text: str) -> str:
    """Plain text from MediaWiki markup (templates, links, refs, tables, emphasis removed)."""
    text = _strip_templates(text)
    for pattern, repl in _WIKI_MARKUP:
        text = pattern.sub(repl, text)
    return text.strip()


def gensim_wiki_articles() -> list[str]:
    """Plain-text articles of the shortened English Wikipedia dump shipped in the gensim wheel."""
    try:
        path = Path(str(md.distribution("gensim").locate_file(GENSIM_WIKI)))
    except md.PackageNotFoundError:
        raise DataError("the default Wikipedia sample needs 'gensim': pip install --no-deps gensim==4.4.0") from None
    if not path.is_file():
        raise DataError(f"the gensim package has no Wikipedia sample at {path}")
    articles: list[str] = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.endswith("}text") or elem.tag == "text":
                body = elem.text or ""
                if body and not body.lstrip().upper().startswith("#REDIRECT"):
                    plain = strip_wiki_markup(body)
                    if len(plain) > 200:
                        articles.append(plain)
            elem.clear()
    return articles
