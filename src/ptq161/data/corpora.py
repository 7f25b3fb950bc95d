"""Named corpora as token streams, and the seeded calibration sampler.

Evaluation corpora (``eval_tokens``):
  ``wikitext2`` (test split; ``wikitext2:valid``, ``wikitext2:train`` when present),
  ``c4`` (GPTQ style: 256 random seqlen windows of random validation documents, seed 0),
  ``c4-new`` (BiLLM / PB-LLM style: first 1100 validation documents joined, 256 windows),
  ``wiki-sample`` (the Wikipedia sample shipped in the gensim wheel; its last 20 % of
  articles; the default when no WikiText-2 is available), ``text:PATH`` (any UTF-8 file).
Calibration corpora (``calibration_windows``) never read an evaluation split; ``A+B`` mixes
corpora window by window (``wikitext2+c4``: even windows WikiText-2, odd windows C4 train; several
files: ``text:a.txt+text:b.txt``). The default (``default_calib_corpus``) is the general-purpose mix
``wikitext2+c4`` of what the data directory holds; ``wikitext2`` alone is the papers' protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase as Tokenizer

from ..errors import DataError
from ..utils import python_rng
from . import sources

C4_WINDOWS = 256  # both C4 protocols use 256 windows of seqlen tokens
C4_NEW_DOCS = 1100
WIKI_SAMPLE_TEST_SHARE = 0.2
EVAL_CORPORA = ("wikitext2", "c4", "c4-new", "wiki-sample", "text:PATH")
CALIB_CORPORA = ("wikitext2", "c4", "wiki-sample", "text:PATH", "A+B (a mix, e.g. wikitext2+c4)")


@dataclass(frozen=True)
class TokenSet:
    """A tokenized corpus: ``tokens`` is int64 of shape [1, N]."""

    name: str
    tokens: torch.Tensor
    source: str
    note: str = ""


def _encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True).input_ids
    return ids.to(torch.long)


def _wikitext2_path(data_dir: Path | None, split: str) -> Path:
    if split not in ("test", "valid", "train"):
        raise DataError(f"unknown WikiText-2 split '{split}' (test, valid, train)")
    return sources.require_file(data_dir, f"{sources.WIKITEXT2_DIR}/wiki.{split}.raw", f"WikiText-2 {split}")


def _text_file(spec: str) -> Path:
    path = Path(spec.split(":", 1)[1]).expanduser()
    if not path.is_file():
        raise DataError(f"text file '{path}' not found")
    return path


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"'{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _wiki_sample(part: str) -> tuple[str, str]:
    articles = sources.gensim_wiki_articles()
    cut = int(len(articles) * (1 - WIKI_SAMPLE_TEST_SHARE))
    chosen = articles[cut:] if part == "test" else articles[:cut]
    return "\n\n".join(chosen), f"gensim {sources.GENSIM_WIKI.rsplit('/', 1)[1]} ({part}: {len(chosen)} articles)"


def _doc_windows(docs: list[str], tokenizer: Tokenizer, n: int, seqlen: int, seed: int) -> torch.Tensor:
    """GPTQ-style: ``n`` times pick a random document with >= seqlen tokens and a random window.

    Returns int64 [n, seqlen].
    """
    rng = python_rng(seed)
    cache: dict[int, torch.Tensor] = {}
    windows = []
    for _ in range(n):
        for _attempt in range(100 * len(docs)):
            i = rng.randint(0, len(docs) - 1)
            if i not in cache:
                cache[i] = _encode(tokenizer, docs[i])[0]
            if cache[i].numel() >= seqlen:
                break
        else:
            raise DataError(f"no document has {seqlen} tokens; lower --seqlen")
        ids = cache[i]
        start = rng.randint(0, ids.numel() - seqlen - 1) if ids.numel() > seqlen else 0
        windows.append(ids[start : start + seqlen])
    return torch.stack(windows)


def check_eval_name(name: str) -> None:
    """Raise ``DataError`` unless ``name`` is a known evaluation corpus (checked before loading a model)."""
    base = name.partition(":")[0]
    if base not in ("wikitext2", "text") and name not in EVAL_CORPORA:
        raise DataError(f"unknown dataset '{name}'; choose from {', '.join(EVAL_CORPORA)}")


def eval_tokens(name: str, tokenizer: Tokenizer, *, seqlen: int = 2048, data_dir: str | Path | None = None) -> TokenSet:
    """Tokenize evaluation corpus ``name`` (see module docstring) into a [1, N] stream."""
    ddir = sources.resolve_data_dir(data_dir)
    base, _, split = name.partition(":")
    if base == "text":
        path = _text_file(name)
        return TokenSet(name, _encode(tokenizer, _read_text_file(path)), str(path))
    if base == "wikitext2":
        path = _wikitext2_path(ddir, split or "test")
        return TokenSet(name, _encode(tokenizer, sources.wikitext2_text(path)), str(path), "rows joined with \\n\\n")
    if name == "c4":
        path = sources.require_file(ddir, sources.C4_VALID_2K, "C4 (GPTQ style)")
        docs = sources.read_parquet_texts(path)
        toks = _doc_windows(docs, tokenizer, C4_WINDOWS, seqlen, seed=0).reshape(1, -1)
        return TokenSet(name, toks, str(path), f"GPTQ style: {C4_WINDOWS} random windows, seed 0")
    if name == "c4-new":
        path = sources.require_file(ddir, sources.C4_VALID_HEAD, "C4 (c4-new style)")
        docs = sources.read_truncated_json_docs(path)[:C4_NEW_DOCS]
        toks = _encode(tokenizer, " ".join(docs))[:, : C4_WINDOWS * seqlen]
        return TokenSet(name, toks, str(path), f"c4-new style: first {len(docs)} documents joined")
    if name == "wiki-sample":
        text, src = _wiki_sample("test")
        return TokenSet(name, _encode(tokenizer, text), src, "fallback corpus (no WikiText-2)")
    raise DataError(f"unknown dataset '{name}'; choose from {', '.join(EVAL_CORPORA)}")


def default_eval_corpus(data_dir: str | Path | None = None) -> str:
    """``wikitext2`` when its test split is in the data directory, else ``wiki-sample``."""
    ddir = sources.resolve_data_dir(data_dir)
    if ddir is not None and (ddir / sources.WIKITEXT2_DIR / "wiki.test.raw").is_file():
        return "wikitext2"
    return "wiki-sample"


def default_eval_corpora(data_dir: str | Path | None = None) -> list[str]:
    """The evaluation corpora to quote together: ``default_eval_corpus`` and ``c4`` when the data directory
    has C4's validation sample (quality is quoted on WikiText-2 and C4 side by side)."""
    ddir = sources.resolve_data_dir(data_dir)
    has_c4 = ddir is not None and (ddir / sources.C4_VALID_2K).is_file()
    return [default_eval_corpus(ddir)] + (["c4"] if has_c4 else [])


def default_calib_corpus(data_dir: str | Path | None = None) -> str:
    """The general-purpose calibration mix of the corpora the data directory holds.

    ``wikitext2+c4`` (WikiText-2 train, else valid, window by window with the C4 train sample) when
    both are present, the one present otherwise, else ``wiki-sample`` (shipped with gensim).
    """
    ddir = sources.resolve_data_dir(data_dir)
    parts = []
    if ddir is not None and any((ddir / sources.WIKITEXT2_DIR / f"wiki.{s}.raw").is_file() for s in ("train", "valid")):
        parts.append("wikitext2")
    if ddir is not None and (ddir / sources.C4_TRAIN_HEAD).is_file():
        parts.append("c4")
    return "+".join(parts) or "wiki-sample"


def _stream_windows(tokens: torch.Tensor, n: int, seqlen: int, seed: int, what: str) -> torch.Tensor:
    """``n`` random windows of ``seqlen`` tokens from a [1, N] stream, GPTQ style. -> [n, seqlen]."""
    total = tokens.shape[1]
    if total <= seqlen:
        raise DataError(f"{what} has {total} tokens, fewer than one calibration window of {seqlen}")
    rng = python_rng(seed)
    starts = [rng.randint(0, total - seqlen - 1) for _ in range(n)]
    return torch.stack([tokens[0, s : s + seqlen] for s in starts])


def mix_parts(name: str) -> list[str]:
    """The corpora of a calibration mix: ``"wikitext2+c4"`` -> ``["wikitext2", "c4"]``; one corpus -> ``[name]``.

    A ``text:PATH`` part runs to the next ``+text:`` (its path may hold a ``+``), so several files mix:
    ``"c4+text:a.txt+text:b+c.txt"`` -> ``["c4", "text:a.txt", "text:b+c.txt"]``.
    """
    chunks = name.split("+text:")
    first, paths = chunks[0], chunks[1:]
    parts = [first] if first.startswith("text:") else first.split("+")
    parts += [f"text:{p}" for p in paths]
    if any(not p or p == "text:" for p in parts):
        raise DataError(f"calibration mix '{name}' has an empty part (write e.g. wikitext2+c4)")
    return parts


def interleave(groups: list[torch.Tensor]) -> torch.Tensor:
    """Window i of the result is window i // m of group i % m (m = len(groups)); group k holds
    len(range(k, n, m)) windows of int64 [n_k, T]. Returns int64 [n, T]."""
    n = sum(g.shape[0] for g in groups)
    return torch.stack([groups[i % len(groups)][i // len(groups)] for i in range(n)])


def calibration_windows(
    name: str | None,
    tokenizer: Tokenizer,
    *,
    nsamples: int,
    seqlen: int,
    seed: int,
    data_dir: str | Path | None = None,
) -> tuple[torch.Tensor, str]:
    """Seeded calibration windows, int64 [nsamples, seqlen], and a description of the source.

    ``wikitext2`` reads the train split when the data directory has it, else the
    validation split (disjoint from test); ``c4`` reads the C4 train sample. A mix of m corpora (``A+B``) takes
    window i from corpus i % m, drawn with the same seed as that corpus alone, so the first k windows of
    a mix are the same whatever ``nsamples`` is.
    """
    if nsamples < 1:
        raise DataError("the number of calibration samples must be at least 1")
    ddir = sources.resolve_data_dir(data_dir)
    name = name or default_calib_corpus(ddir)
    parts = mix_parts(name)
    if len(parts) > 1:
        if nsamples < len(parts):
            raise DataError(f"a mix of {len(parts)} corpora needs at least {len(parts)} calibration windows")
        drawn = [
            calibration_windows(
                p, tokenizer, nsamples=len(range(k, nsamples, len(parts))), seqlen=seqlen, seed=seed, data_dir=ddir
            )
            for k, p in enumerate(parts)
        ]
        return interleave([w for w, _ in drawn]), " + ".join(src for _, src in drawn) + " (window by window)"
    base, _, split = name.partition(":")
    if base == "wikitext2":
        if split == "test":
            raise DataError("refusing to calibrate on WikiText-2 test (the evaluation split)")
        if not split:
            has_train = ddir is not None and (ddir / sources.WIKITEXT2_DIR / "wiki.train.raw").is_file()
            split = "train" if has_train else "valid"
        path = _wikitext2_path(ddir, split)
        stream = _encode(tokenizer, sources.wikitext2_text(path))
        return _stream_windows(stream, nsamples, seqlen, seed, str(path)), f"{path} (WikiText-2 {split})"
    if base == "c4":
        path = sources.require_file(ddir, sources.C4_TRAIN_HEAD, "C4 calibration (train sample)")
        docs = sources.read_truncated_json_docs(path)
        return _doc_windows(docs, tokenizer, nsamples, seqlen, seed), str(path)
    if base == "wiki-sample":
        text, src = _wiki_sample("train")
        return _stream_windows(_encode(tokenizer, text), nsamples, seqlen, seed, src), src
    if base == "text":
        path = _text_file(name)
        stream = _encode(tokenizer, _read_text_file(path))
        return _stream_windows(stream, nsamples, seqlen, seed, str(path)), str(path)
    raise DataError(f"unknown calibration dataset '{name}'; choose from {', '.join(CALIB_CORPORA)}")
