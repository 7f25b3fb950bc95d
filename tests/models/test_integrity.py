"""sha256 manifests: written with every output and cache entry, checked on load, damage named in one line."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from tests.helpers import quantize_with

from ptq161 import CalibConfig
from ptq161.cli import main
from ptq161.errors import PTQ161Error
from ptq161.models.integrity import (
    CACHE_MANIFEST,
    IntegrityError,
    manifest,
    verify_cache,
    verify_manifest,
    verify_output_dir,
    write_cache_manifest,
)
from ptq161.models.loading import builtin_dir, cache_root, load_model
from ptq161.pipeline.output_dir import META, read_meta


def _flip_byte(path: Path, offset_from_end: int = 100) -> None:
    """Overwrite one byte near the end of ``path`` (a safetensors header stays intact)."""
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_records_sizes_and_hashes_and_names_the_damaged_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"hello" * 100)
    (tmp_path / "sub" / "b.txt").write_text("x")
    (tmp_path / "skip.json").write_text("{}")
    files = manifest(tmp_path, skip=("skip.json",))
    assert set(files) == {"a.bin", "sub/b.txt"}
    assert files["a.bin"] == {"bytes": 500, "sha256": hashlib.sha256(b"hello" * 100).hexdigest()}
    verify_manifest(tmp_path, files, "dir")  # unchanged: passes
    _flip_byte(tmp_path / "a.bin")
    with pytest.raises(IntegrityError, match=re.escape("'a.bin' is damaged")):
        verify_manifest(tmp_path, files, "dir")
    (tmp_path / "sub" / "b.txt").write_text("xy")
    # sizes are checked first
    with pytest.raises(IntegrityError, match=re.escape("'sub/b.txt' has 2 bytes, 1 were written")):
        verify_manifest(tmp_path, files, "dir")
    (tmp_path / "sub" / "b.txt").unlink()
    with pytest.raises(IntegrityError, match=re.escape("'sub/b.txt' is missing")):
        verify_manifest(tmp_path, files, "dir")
    with pytest.raises(IntegrityError, match="malformed"):
        verify_manifest(tmp_path, {"a.bin": {"bytes": 1}}, "dir")


@pytest.mark.parametrize("method", ["ptq161", "rtn"])
def test_output_dir_records_every_file_and_load_refuses_a_damaged_one(method, tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "q"
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64)
    quantize_with(str(tiny_model_dir), method, calib=calib, output=out, progress=False)
    files = read_meta(out)["files"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {META}
    assert set(files) == on_disk and "config.json" in files  # every file but ptq161.json itself
    assert verify_output_dir(out)
    load_model(str(out))
    weights = out / "model.safetensors"
    _flip_byte(weights)
    with pytest.raises(IntegrityError, match=re.escape("'model.safetensors' is damaged")):
        load_model(str(out))
    load_model(str(out), verify=False)  # the flag skips the check


def test_cli_names_the_damaged_file_in_one_line(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["--recipe", "smoke", "--calib-dataset", f"text:{text_file}"]
    assert main(["quantize", str(tiny_model_dir), *args, "--output", str(out)]) == 0
    _flip_byte(out / "model.safetensors")
    capsys.readouterr()
    assert main(["ppl", str(out), "--datasets", f"text:{text_file}", "--seqlen", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors' is damaged" in err
    assert main(["ppl", str(out), "--datasets", f"text:{text_file}", "--seqlen", "64", "--no-verify"]) == 0


def test_old_outputs_without_a_manifest_still_load(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "q"
    quantize_with(str(tiny_model_dir), "rtn", calib=CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64),
             output=out, progress=False)  # fmt: skip
    meta = json.loads((out / META).read_text())
    del meta["files"]
    (out / META).write_text(json.dumps(meta))
    assert not verify_output_dir(out)
    load_model(str(out))


def test_cache_manifest_detects_damage(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "PTQ161_SOURCE").write_text("format=1\n")
    assert not verify_cache(tmp_path)  # none yet (a cache written by an older ptq161)
    write_cache_manifest(tmp_path)
    assert set(json.loads((tmp_path / CACHE_MANIFEST).read_text())) == {"model.safetensors", "PTQ161_SOURCE"}
    assert verify_cache(tmp_path)
    _flip_byte(tmp_path / "model.safetensors")
    with pytest.raises(IntegrityError, match=re.escape("model.safetensors' is damaged")):
        verify_cache(tmp_path)


@pytest.mark.slow  # converts the real GGUF again; the cache checks above stay in the default run
def test_damaged_cache_entry_is_rebuilt_from_its_package(tmp_path, monkeypatch, caplog):
    real = builtin_dir("smollm2-135m")
    monkeypatch.setenv("PTQ161_CACHE", str(tmp_path))
    copy = cache_root() / "models" / real.name
    shutil.copytree(real, copy)
    (copy / CACHE_MANIFEST).unlink(missing_ok=True)
    assert builtin_dir("smollm2-135m", verify=True) == copy  # no manifest: recorded now (trusted on first use)
    good = json.loads((copy / CACHE_MANIFEST).read_text())
    _flip_byte(copy / "model.safetensors", 1000)
    with caplog.at_level(logging.WARNING, logger="ptq161.models.loading"):
        assert builtin_dir("smollm2-135m", verify=True) == copy
    assert "model.safetensors' is damaged" in caplog.text and "rebuilding" in caplog.text
    assert json.loads((copy / CACHE_MANIFEST).read_text())["model.safetensors"] == good["model.safetensors"]
    assert verify_cache(copy)


@pytest.mark.parametrize("lazy", [False, True])
def test_packed_indices_out_of_range_never_reach_a_kernel(lazy, tiny_model_dir, text_file, tmp_path):
    from safetensors.torch import load_file, save_file

    from ptq161.models.loading import load_model_lazy

    out = tmp_path / "q"
    quantize_with(str(tiny_model_dir), "ptq161", calib=CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64),
             output=out, progress=False)  # fmt: skip
    tensors = load_file(str(out / "model.safetensors"))
    key = "model.layers.0.mlp.down_proj.sal_idx"
    tensors[key][0] = 30000  # a well-formed file whose numbers are wrong (the manifest is not checked here)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(IntegrityError):  # the manifest catches it first
        load_model(str(out))
    needle = "packed layer 'model.layers.0.mlp.down_proj': sal_idx holds 30000"
    with pytest.raises(PTQ161Error, match=re.escape(needle)):
        if lazy:
            load_model_lazy(str(out), verify=False)[0].load_block(0)
        else:
            load_model(str(out), verify=False)


def _poison(model_dir: Path, key: str, value: float) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors[key].view(-1)[3] = value
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("lazy", [False, True])
def test_nan_weights_are_refused_at_load_with_their_name(lazy, tiny_model_dir):
    from ptq161.errors import NonFiniteError
    from ptq161.models.loading import load_model_lazy

    _poison(tiny_model_dir, "model.layers.1.self_attn.k_proj.weight", float("nan"))
    needle = re.escape("the model's weight 'model.layers.1.self_attn.k_proj.weight' holds NaN values")
    with pytest.raises(NonFiniteError, match=needle):
        if lazy:
            load_model_lazy(str(tiny_model_dir))[0].load_block(1)
        else:
            load_model(str(tiny_model_dir))


def test_non_finite_numbers_stop_the_cli_with_exit_3_naming_where(tiny_model_dir, text_file, tmp_path, capsys):
    _poison(tiny_model_dir, "model.norm.weight", float("inf"))
    assert main(["ppl", str(tiny_model_dir), "--datasets", f"text:{text_file}", "--seqlen", "64"]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'model.norm.weight' holds infinite values" in err


def _overflowing(model_dir: Path) -> None:
    """Finite weights whose block 1 output overflows float32 (inf, then NaN downstream)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] *= 1e25
    tensors["model.layers.1.mlp.down_proj.weight"] *= 1e25
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("lazy", [False, True])
def test_a_non_finite_perplexity_names_the_window_or_block(lazy, tiny_model_dir, tokenizer):
    import torch

    from ptq161.errors import NonFiniteError
    from ptq161.eval.perplexity import perplexity
    from ptq161.models.loading import load_model_lazy

    _overflowing(tiny_model_dir)
    model = load_model_lazy(str(tiny_model_dir))[0] if lazy else load_model(str(tiny_model_dir))[0]
    tokens = torch.randint(0, 256, (1, 200), generator=torch.Generator().manual_seed(0))
    needle = "the output of block 1 (windows 0..2)" if lazy else "the loss of window 0 of wiki"
    with pytest.raises(NonFiniteError, match=re.escape(needle)):
        perplexity(model, tokens, seqlen=64, dataset="wiki", progress=False)


@pytest.mark.parametrize(
    "method, needle",
    [("ptq161", "block 1: the training loss"), ("rtn", "block 1: model.layers.1.mlp.up_proj weight holds NaN")],
)
def test_quantization_stops_at_the_first_non_finite_block_and_saves_nothing_of_it(
    method, needle, tiny_model_dir, text_file, tmp_path
):
    from ptq161.errors import NonFiniteError
    from ptq161.pipeline.state import STATE_DIR

    _overflowing(tiny_model_dir)
    out = tmp_path / "q"
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64)
    with pytest.raises(NonFiniteError, match=needle):
        quantize_with(str(tiny_model_dir), method, calib=calib, output=out, progress=False)
    saved = sorted(p.name for p in (out / STATE_DIR).iterdir())
    assert "block_0000.safetensors" in saved and "block_0001.safetensors" not in saved
    assert not (out / META).exists()


def test_check_finite_finds_a_bad_value_in_any_slice(monkeypatch):
    import ptq161.errors as errors
    from ptq161.errors import NonFiniteError, check_finite

    monkeypatch.setattr(errors, "FINITE_CHUNK", 7)  # many slices, the last one partial
    t = torch.zeros(5, 9)
    check_finite(t, "t")
    for pos, value, kind in ((44, float("nan"), "NaN"), (20, float("inf"), "infinite"), (0, float("-inf"), "inf")):
        bad = t.clone()
        bad.view(-1)[pos] = value
        with pytest.raises(NonFiniteError, match=kind):
            check_finite(bad, "t")
    both = t.clone()
    both.view(-1)[3], both.view(-1)[40] = float("inf"), float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):  # a NaN anywhere is named first
        check_finite(both, "t")
    check_finite(torch.ones(3, dtype=torch.int64), "ints are not checked")
