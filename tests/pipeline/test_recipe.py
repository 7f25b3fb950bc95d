"""Recipes: one resolution for the Python API and the command line, files that round-trip, runs that repeat."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from tests.helpers import byte_tokenizer, tiny_llama
from tests.test_no_measurements import measured_lines

import ptq161
from ptq161.cli import main
from ptq161.errors import PTQ161Error
from ptq161.methods.ptq161 import PTQ161Config
from ptq161.pipeline.recipe import Recipe, read_recipe, recipe_names, recipe_text, resolve_recipe

# settings that keep a tiny run short (the default recipe's compiled stages would compile for a minute)
TINY = {
    "calib_nsamples": 4,
    "calib_seqlen": 64,
    "epochs": 1,
    "train_compile": "off",
    "e2e_steps": 3,
    "e2e_windows": 6,
    "e2e_compile": "off",
}
# what ptq161.json records of the run rather than of the result: how long and how much memory it took
RUN_RECORD = {
    "seconds", "peak_rss_mb", "time_s", "step_seconds", "first_step_seconds", "step_seconds_after_first",
    "allreduce_seconds_per_step",
}  # fmt: skip


def _flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--" + k.replace("_", "-"), str(v))]


def _result(meta: dict) -> dict:
    """ptq161.json without the run record (timings and memory), recursively."""
    if isinstance(meta, dict):
        return {k: _result(v) for k, v in meta.items() if k not in RUN_RECORD}
    if isinstance(meta, list):
        return [_result(v) for v in meta]
    return meta


def assert_same_output(a: Path, b: Path) -> None:
    """Every file byte-identical, ptq161.json identical but for the run record."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        if rel.name == "ptq161.json":
            assert _result(json.loads((a / rel).read_text())) == _result(json.loads((b / rel).read_text()))
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_api_and_cli_write_identical_outputs_and_ptq161_json_repeats_the_run(tiny_model_dir, text_file, tmp_path):
    settings = {"calib_dataset": f"text:{text_file}", **TINY}
    ptq161.quantize(str(tiny_model_dir), output=tmp_path / "api", progress=False, **settings)  # default recipe
    assert main(["quantize", str(tiny_model_dir), "--output", str(tmp_path / "cli"), *_flags(settings)]) == 0
    assert_same_output(tmp_path / "api", tmp_path / "cli")
    meta = json.loads((tmp_path / "api" / "ptq161.json").read_text())
    assert meta["recipe"]["name"] == "cpu" and meta["recipe"]["e2e"]["steps"] == 3
    assert meta["machine"]["code_paths"]["train_matmul"] in ("float32", "bfloat16")
    again = tmp_path / "again"  # the recorded recipe alone repeats the run
    assert main(["quantize", str(tiny_model_dir), "--recipe", str(tmp_path / "api"), "--output", str(again)]) == 0
    assert_same_output(tmp_path / "api", again)


def test_the_default_recipe_is_the_same_for_the_api_and_the_cli():
    from ptq161.cli import build_parser
    from ptq161.cli.quantize import cli_overrides

    args = build_parser().parse_args(["quantize", "m"])
    assert resolve_recipe(args.recipe, **cli_overrides(args)) == resolve_recipe() == read_recipe("cpu")


def test_an_nn_module_with_its_tokenizer_quantizes_like_its_directory(tiny_model_dir, text_file, tmp_path):
    settings = {"calib_dataset": f"text:{text_file}", **TINY}
    ptq161.quantize(str(tiny_model_dir), "smoke", output=tmp_path / "dir", progress=False, **settings)
    model = tiny_llama()  # the weights saved in tiny_model_dir
    res = ptq161.quantize(model, "smoke", tokenizer=byte_tokenizer(), output=tmp_path / "mod", progress=False,
                          **settings)  # fmt: skip
    assert res.model is model  # quantized in place
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "dir" / f).read_bytes() == (tmp_path / "mod" / f).read_bytes()
    with pytest.raises(PTQ161Error, match="needs its tokenizer"):
        ptq161.quantize(tiny_llama(), "smoke")


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_round_trips_and_names_no_measurement(name):
    r = read_recipe(name)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.description and not measured_lines(r.description, f"recipes/{name}.toml")
    raw = tomllib.loads(recipe_text(name))
    assert set(raw) <= {"description", "method", "calibration", "method_settings", "e2e", "output"}


def test_overrides_change_one_setting_and_bad_ones_are_one_line_errors(tmp_path):
    r = resolve_recipe("cpu", epochs=3, calib_nsamples=8, e2e_steps=0, head="fp32")
    assert (r.method_config.epochs, r.calib.nsamples, r.e2e.steps, r.head) == (3, 8, 0, "fp32")
    assert r.method_config.binary_init == "gptq"  # the rest is the recipe's
    r = resolve_recipe("cpu", method="omniquant", bits=3)  # epochs carried over, PTQ1.61's settings dropped
    assert (r.method, r.method_config.epochs, r.method_config.bits, r.e2e.steps) == ("omniquant", 10, 3, 0)
    assert r.method_config.train_compile == "auto"  # chosen by the recipe, shared by both methods
    assert resolve_recipe("cpu", method="pbllm").method_config.salient_ratio == 0.1  # PTQ1.61's default stays
    for bad, msg in [
        ({"epoch": 3}, r"unknown setting epoch \(--epoch\)"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"method": "rtn", "salient_ratio": 0.1}, "method 'rtn' has no setting salient_ratio"),
        ({"method": "rtn", "head": "int8"}, "head int8 needs a packed format"),
        ({"e2e_steps": 0, "e2e_kl": "topk"}, "end-to-end settings while the stage is off"),
        ({"binary_init": "bogus"}, "binary init must be independent or gptq"),
    ]:
        with pytest.raises(PTQ161Error, match=msg):
            resolve_recipe("cpu", **bad)
    with pytest.raises(PTQ161Error, match="neither a shipped recipe"):
        resolve_recipe("no-such-recipe")
    bad_toml = tmp_path / "r.toml"
    bad_toml.write_text("method = 'ptq161'\n[method_settings]\nepochs = [\n")
    with pytest.raises(PTQ161Error, match="not valid TOML"):
        resolve_recipe(bad_toml)
    bad_toml.write_text("method = 'ptq161'\n[method_settings]\nepocs = 2\n")
    with pytest.raises(PTQ161Error, match="unknown PTQ161Config settings: epocs"):
        resolve_recipe(bad_toml)


def test_a_recipe_file_of_ones_own(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text(
        'description = "mine"\nmethod = "ptq161"\n[calibration]\nnsamples = 8\n[method_settings]\nepochs = 3\n'
    )
    r = resolve_recipe(f, s_param="log")
    assert (r.calib.nsamples, r.calib.seqlen, r.method_config.epochs, r.method_config.s_param) == (8, 2048, 3, "log")
    assert r.method_config == PTQ161Config(epochs=3, s_param="log")


def test_configs_written_with_earlier_setting_names_still_load():
    cfg = PTQ161Config.from_dict({"init": "gptq", "matmul": "float32", "compile": "off", "loss": "delta"})
    assert (cfg.binary_init, cfg.train_matmul, cfg.train_compile, cfg.block_loss) == ("gptq", "float32", "off", "delta")


def test_recipes_command_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n}" in out for n in recipe_names()) and "cpu (default)" in out
    assert main(["recipes", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == read_recipe("cpu").to_dict()
    assert main(["recipes", "--settings"]) == 0
    assert "--e2e-steps" in capsys.readouterr().out
    assert main(["recipes", "bogus"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
