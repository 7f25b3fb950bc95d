from pathlib import Path

import pytest
import torch
from tests.helpers import byte_tokenizer, tiny_llama

from ptq161.errors import PTQ161Error
from ptq161.models import load_model
from ptq161.models.loading import resolve_model_path
from ptq161.utils import staging_dir


def test_local_directory_roundtrip_is_exact(tiny_model_dir: Path):
    model, tok = load_model(str(tiny_model_dir))
    ref = tiny_llama()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert tok("ab").input_ids == byte_tokenizer()("ab").input_ids


def test_missing_model_and_non_model_paths(tmp_path: Path):
    with pytest.raises(PTQ161Error, match="no such model"):
        resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(PTQ161Error, match="is a file"):
        resolve_model_path(str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PTQ161Error, match=r"no config\.json"):
        resolve_model_path(str(tmp_path / "empty"))


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PTQ161Error, match="cannot load model"):
        load_model("someorg/some-model-that-is-not-cached")


def test_staging_dir_leaves_nothing_on_failure(tmp_path: Path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), staging_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with staging_dir(final) as tmp:
        (tmp / "done").write_text("ok")
    assert (final / "done").read_text() == "ok"
