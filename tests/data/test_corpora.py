import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ptq161.data import calibration_windows, default_calib_corpus, default_eval_corpus, eval_tokens
from ptq161.data.corpora import mix_parts
from ptq161.data.sources import read_truncated_json_docs, strip_wiki_markup, wikitext2_text
from ptq161.errors import DataError


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "wikitext-2-raw-v1").mkdir(parents=True)
    (d / "wikitext-2-raw-v1" / "wiki.test.raw").write_text(" \n = Title = \n \n Some text here . \n")
    (d / "wikitext-2-raw-v1" / "wiki.valid.raw").write_text(" \n = Valid = \n" + " more valid words ." * 50 + "\n")
    (d / "c4").mkdir()
    docs = [{"text": f"document {i} " + "word " * (20 * (i % 5))} for i in range(30)]
    raw = "\n".join(json.dumps(x) for x in docs) + '\n{"text": "cut off'
    (d / "c4" / "c4_valid_part_of_0.json").write_text(raw)
    (d / "c4" / "c4_train_part_of_0.json").write_text(raw)
    pq.write_table(pa.table({"text": [x["text"] for x in docs]}), d / "c4" / "c4_validation_2k.parquet")
    return d


def test_wikitext2_rows_join_like_the_hub_dataset(data_dir: Path):
    text = wikitext2_text(data_dir / "wikitext-2-raw-v1" / "wiki.test.raw")
    # rows: "" , " = Title = \n", "", " Some text here . \n"
    assert text == "\n\n = Title = \n\n\n\n\n Some text here . \n"


def test_truncated_json_reads_complete_docs_only(data_dir: Path):
    docs = read_truncated_json_docs(data_dir / "c4" / "c4_valid_part_of_0.json")
    assert len(docs) == 30 and docs[0].startswith("document 0")


def test_eval_tokens_each_corpus(data_dir: Path, tokenizer):
    wt = eval_tokens("wikitext2", tokenizer, data_dir=data_dir)
    expected = tokenizer(wikitext2_text(data_dir / "wikitext-2-raw-v1" / "wiki.test.raw")).input_ids
    assert wt.tokens.tolist() == [expected] and wt.source.endswith("wiki.test.raw")
    new = eval_tokens("c4-new", tokenizer, seqlen=16, data_dir=data_dir)
    assert new.tokens.shape[1] <= 256 * 16
    c4a = eval_tokens("c4", tokenizer, seqlen=64, data_dir=data_dir)
    c4b = eval_tokens("c4", tokenizer, seqlen=64, data_dir=data_dir)
    assert c4a.tokens.shape == (1, 256 * 64) and torch.equal(c4a.tokens, c4b.tokens)


def test_text_file_corpus_and_bad_files(tmp_path: Path, tokenizer):
    f = tmp_path / "t.txt"
    f.write_text("hello")
    assert eval_tokens(f"text:{f}", tokenizer).tokens.tolist() == [tokenizer("hello").input_ids]
    with pytest.raises(DataError, match="not found"):
        eval_tokens(f"text:{tmp_path / 'missing.txt'}", tokenizer)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="not UTF-8"):
        eval_tokens(f"text:{tmp_path / 'bin.txt'}", tokenizer)
    with pytest.raises(DataError, match="unknown dataset"):
        eval_tokens("nope", tokenizer)


def test_missing_data_dir_is_a_clear_error(tokenizer, monkeypatch, tmp_path):
    monkeypatch.delenv("PTQ161_DATA", raising=False)
    with pytest.raises(DataError, match="data directory"):
        eval_tokens("wikitext2", tokenizer)
    with pytest.raises(DataError, match="does not exist"):
        eval_tokens("wikitext2", tokenizer, data_dir=tmp_path / "nothing")


def test_calibration_is_seeded_and_never_uses_test(data_dir: Path, tokenizer):
    a, src = calibration_windows("wikitext2", tokenizer, nsamples=4, seqlen=32, seed=2, data_dir=data_dir)
    b, _ = calibration_windows("wikitext2", tokenizer, nsamples=4, seqlen=32, seed=2, data_dir=data_dir)
    c, _ = calibration_windows("wikitext2", tokenizer, nsamples=4, seqlen=32, seed=3, data_dir=data_dir)
    assert a.shape == (4, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert "wiki.valid.raw" in src  # no train split in this data dir -> valid, never test
    with pytest.raises(DataError, match="refusing"):
        calibration_windows("wikitext2:test", tokenizer, nsamples=1, seqlen=8, seed=0, data_dir=data_dir)
    w, src = calibration_windows("c4", tokenizer, nsamples=3, seqlen=40, seed=0, data_dir=data_dir)
    assert w.shape == (3, 40) and "train" in src
    with pytest.raises(DataError, match="fewer than one"):
        calibration_windows("wikitext2", tokenizer, nsamples=1, seqlen=10**6, seed=0, data_dir=data_dir)
    with pytest.raises(DataError, match="at least 1"):
        calibration_windows("wikitext2", tokenizer, nsamples=0, seqlen=8, seed=0, data_dir=data_dir)


def test_default_corpora_follow_the_data_dir(data_dir: Path, monkeypatch):
    monkeypatch.delenv("PTQ161_DATA", raising=False)
    assert default_eval_corpus(data_dir) == "wikitext2"
    assert default_calib_corpus(data_dir) == "wikitext2+c4"  # the general-purpose mix
    (data_dir / "c4" / "c4_train_part_of_0.json").unlink()
    assert default_calib_corpus(data_dir) == "wikitext2"
    assert default_eval_corpus(None) == "wiki-sample"
    assert default_calib_corpus(None) == "wiki-sample"


def test_wiki_markup_is_stripped():
    raw = "{{Infobox|a={{b}}}}'''Anarchism''' is a [[political philosophy|philosophy]]<ref>x</ref> [[Category:X]]."
    assert strip_wiki_markup(raw) == "Anarchism is a philosophy ."


def test_gensim_sample_is_real_text(tokenizer):
    ts = eval_tokens("wiki-sample", tokenizer)
    text = tokenizer.decode(ts.tokens[0, :20000].tolist())
    assert ts.tokens.shape[1] > 100_000 and "gensim" in ts.source
    assert text.count(" the ") > 50 and "{{" not in text and "[[" not in text


def test_calibration_mix_interleaves_its_corpora_and_keeps_its_prefix(data_dir: Path, tokenizer):
    kw = dict(tokenizer=tokenizer, seqlen=24, seed=2, data_dir=data_dir)
    wiki, _ = calibration_windows("wikitext2", nsamples=3, **kw)
    c4, _ = calibration_windows("c4", nsamples=2, **kw)
    mix, src = calibration_windows("wikitext2+c4", nsamples=5, **kw)
    assert torch.equal(mix, torch.stack([wiki[0], c4[0], wiki[1], c4[1], wiki[2]]))
    assert "wiki.valid.raw" in src and "c4_train_part_of_0.json" in src
    longer, _ = calibration_windows("wikitext2+c4", nsamples=12, **kw)
    assert torch.equal(longer[:5], mix)  # more windows extend the mix, as they extend one corpus
    f = data_dir / "a+b.txt"
    f.write_text(" plus " * 200)
    three, _ = calibration_windows(f"wikitext2+c4+text:{f}", nsamples=3, **kw)
    assert torch.equal(three[:2], mix[:2]) and tokenizer.decode(three[2]).strip().startswith("plus")
    g = data_dir / "g.txt"
    g.write_text(" green " * 200)
    files, src = calibration_windows(f"text:{f}+text:{g}", nsamples=2, **kw)  # several files of one's own
    assert "plus" in tokenizer.decode(files[0]) and "green" in tokenizer.decode(files[1]) and str(g) in src
    assert mix_parts(f"c4+text:{f}+text:{g}") == ["c4", f"text:{f}", f"text:{g}"]
    with pytest.raises(DataError, match="empty part"):
        calibration_windows(f"text:{f}+text:", nsamples=2, **kw)
    with pytest.raises(DataError, match="empty part"):
        calibration_windows("wikitext2+", nsamples=4, **kw)
    with pytest.raises(DataError, match="at least 2"):
        calibration_windows("wikitext2+c4", nsamples=1, **kw)
    with pytest.raises(DataError, match="unknown calibration dataset"):
        calibration_windows("wikitext2+nope", nsamples=2, **kw)
