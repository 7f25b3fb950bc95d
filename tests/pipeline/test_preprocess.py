import json

import pytest
import torch
from tests.helpers import quantize_with

import ptq161.pipeline.preprocess as prep
from ptq161 import CalibConfig, Recipe
from ptq161.cli import main
from ptq161.errors import PTQ161Error
from ptq161.methods.ptq161 import PTQ161Config
from ptq161.models import load_model
from ptq161.pipeline.preprocess import LoRAConfig, preprocess
from ptq161.pipeline.state import STATE_DIR, RunState

pytest.importorskip("peft")


def _lora(text_file, **kw) -> LoRAConfig:
    base = dict(rank=4, alpha=8, steps=4, seqlen=32, warmup=1, lr=5e-3, data=f"text:{text_file}", save_every=1)
    return LoRAConfig(**{**base, **kw})


def _run(tiny_model_dir, text_file, out, **kw):
    return preprocess(
        str(tiny_model_dir),
        out,
        recipe=Recipe(
            "ptq161", PTQ161Config(epochs=1), CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=32)
        ),
        lora=_lora(text_file),
        progress=False,
        **kw,
    )


def test_merge_equals_the_unmerged_lora_model(tiny_model_dir, text_file, tmp_path):
    model, _ = load_model(str(tiny_model_dir))
    w_hat = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    lora = _lora(text_file)
    windows = torch.randint(0, 256, (lora.steps, lora.seqlen), generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pm, losses = prep._train(model, lora, windows, RunState(tmp_path, {}), {}, progress=False)
    assert len(losses) == lora.steps
    pm.eval()
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        unmerged = pm(input_ids=ids).logits
        layer = pm.base_model.model.model.layers[0].mlp.down_proj
        delta = lora.scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert delta.abs().max() > 0  # training moved B away from its zero init
        merged_model = pm.merge_and_unload()
        merged = merged_model(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-5)
    # W' = W_hat + alpha / r * B A
    assert torch.allclose(merged_model.model.layers[0].mlp.down_proj.weight, w_hat + delta, atol=1e-6)


def test_saved_directory_loads_and_quantizes(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "pre"
    res = _run(tiny_model_dir, text_file, out)
    meta = json.loads((out / prep.PREPROCESS_META).read_text())
    assert meta["lora"]["steps"] == 4 and len(meta["losses"]) == 4 and meta["recipe"]["method"] == "ptq161"
    assert not (out / STATE_DIR).exists() and not (out / "ptq161.json").exists()
    loaded, _ = load_model(str(out))
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, res.model(ids).logits, atol=1e-5)
    q = quantize_with(
        str(out), "rtn", calib=CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=32), progress=False
    )
    assert q.meta["bits"]["stored_bits_per_weight"] > 1
    with pytest.raises(PTQ161Error, match="finished result"):
        _run(tiny_model_dir, text_file, out)


def test_resume_continues_from_the_saved_step(tiny_model_dir, text_file, tmp_path, monkeypatch):
    ref = _run(tiny_model_dir, text_file, tmp_path / "ref")
    real_save = prep._save_checkpoint

    def save_then_die(state, pm, opt, sched, step, stage):
        real_save(state, pm, opt, sched, step, stage)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_save_checkpoint", save_then_die)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, text_file, out)
    progress = json.loads((out / STATE_DIR / "progress.json").read_text())["progress"]
    assert progress["step"] == 2 and len(progress["losses"]) == 2
    assert sorted(f.name for f in (out / STATE_DIR).glob("*.safetensors")) == [
        "checkpoint_000002.safetensors",
        "quantized.safetensors",
    ]  # the previous checkpoint is dropped once the new one is committed
    monkeypatch.setattr(prep, "_save_checkpoint", real_save)
    with pytest.raises(PTQ161Error, match="--resume"):
        _run(tiny_model_dir, text_file, out)
    res = _run(tiny_model_dir, text_file, out, resume=True)
    assert res.meta["losses"] == ref.meta["losses"]
    for (name, a), (_, b) in zip(res.model.state_dict().items(), ref.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_lora_refuses_evaluation_text_and_bad_settings():
    with pytest.raises(PTQ161Error, match="evaluation split"):
        LoRAConfig(data="wikitext2:test")
    with pytest.raises(PTQ161Error):
        LoRAConfig(rank=0)


def test_cli_preprocess_smoke(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "preprocess",
            str(tiny_model_dir),
            "--output",
            str(out),
            "--preset",
            "smoke",
            "--calib-dataset",
            f"text:{text_file}",
            "--data",
            f"text:{text_file}",
            "--lora-seqlen",
            "32",
            "--rank",
            "4",
        ]
    )
    assert code == 0
    assert "loss:" in capsys.readouterr().out
    assert (out / "config.json").exists() and (out / prep.PREPROCESS_META).exists()
    assert main(["preprocess", str(tiny_model_dir), "--output", str(out), "--data", "wikitext2:test"]) == 2
