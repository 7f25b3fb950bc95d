import argparse
import dataclasses

import pytest
import torch

from ptq161.cli import build_parser
from ptq161.cli.common import method_flags
from ptq161.cli.quantize import cli_overrides
from ptq161.errors import PTQ161Error
from ptq161.methods import METHODS
from ptq161.pipeline.recipe import resolve_recipe


def cli_recipe(*argv: str):
    """The recipe ``ptq161 quantize m ARGV`` runs (the same resolution the command calls)."""
    args = build_parser().parse_args(["quantize", "m", *argv])
    return resolve_recipe(args.recipe, **cli_overrides(args))


def test_every_flag_sets_a_real_config_field_named_like_it_and_every_option_field_has_a_flag():
    flags = method_flags()
    for mf in flags:
        assert mf.flag == "--" + mf.dest.replace("_", "-")  # the flag is the setting's name
        for method in mf.helps:
            assert mf.dest in {f.name for f in dataclasses.fields(METHODS[method].config_class)}
    declared = {
        (name, f.name)
        for name, cls in METHODS.items()
        for f in dataclasses.fields(cls.config_class)
        if "cli" in f.metadata
    }
    assert declared == {(m, mf.dest) for mf in flags for m in mf.helps}
    by_flag = {mf.flag: mf for mf in flags}
    assert set(by_flag["--salient-ratio"].helps) == {"ptq161", "pbllm"}  # one flag, two methods, same parsing
    assert set(by_flag["--bits"].helps) == {"rtn", "gptq", "awq", "omniquant"}
    assert "mask" not in by_flag["--epochs"].helps["omniquant"]


def test_flags_take_the_methods_own_settings_and_refuse_others():
    r = cli_recipe("--method", "rtn", "--bits", "3", "--group-size", "16")  # cpu's epochs: not an rtn field
    assert (r.method_config.bits, r.method_config.group_size, r.e2e.steps, r.head) == (3, 16, 0, "fp32")
    r = cli_recipe("--ratio", "0.3")  # the earlier spelling of --salient-ratio, still accepted
    assert (r.method_config.salient_ratio, r.method_config.epochs) == (0.3, 10)
    with pytest.raises(PTQ161Error, match="method 'billm' has no setting bits"):
        cli_recipe("--method", "billm", "--bits", "3")


def _options(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def test_device_and_dtype_are_offered_where_honoured_and_checked():
    """quantize / preprocess honour them (tests/pipeline/test_devices.py); a device the machine lacks is refused."""
    for cmd in ("quantize", "preprocess", "ppl", "eval"):
        assert {"--device", "--dtype"} <= _options(cmd)
    assert "--dtype" not in _options("generate")  # the engine and the packed kernels compute in float32
    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["quantize", "m", "--device", "bogus"])
    assert e.value.code == 2
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parser.parse_args(["quantize", "m", "--device", "cuda"])


def test_cpu_recipe_settings_and_the_paper_one_flag_away():
    r = cli_recipe()
    cfg, calib, e2e = r.method_config, r.calib, r.e2e
    assert r.name == "cpu" and (calib.nsamples, calib.seqlen, cfg.epochs) == (64, 256, 10)
    assert (cfg.s_param, cfg.lr_s, e2e.steps, e2e.windows, e2e.generated) == ("log", 1e-2, 600, 256, 0)
    assert (cfg.train_compile, e2e.compile) == ("auto", "auto")  # compiled where the machine has a compiler
    assert cfg.binary_init == "gptq"  # signs and codes with GPTQ error feedback
    assert cli_recipe("--binary-init", "independent").method_config.binary_init == "independent"
    r = cli_recipe("--train-compile", "off", "--e2e-compile", "on")
    assert (r.method_config.train_compile, r.e2e.compile) == ("off", "on")
    r = cli_recipe("--s-param", "linear", "--e2e-steps", "0")
    assert (r.method_config.s_param, r.e2e.steps) == ("linear", 0)
    r = cli_recipe("--e2e-windows", "64", "--e2e-generated", "192")
    assert (r.e2e.steps, r.e2e.windows, r.e2e.generated) == (600, 64, 192)  # flags override the recipe's settings
    r = cli_recipe("--method", "rtn")  # no end-to-end stage
    assert r.e2e.steps == 0 and not hasattr(r.method_config, "s_param")
    for off in (["--method", "rtn"], ["--e2e-steps", "0"], ["--recipe", "paper"]):  # the stage is off: refused
        with pytest.raises(
            PTQ161Error, match=r"e2e_generated \(--e2e-generated\): end-to-end settings while the stage is off"
        ):
            cli_recipe(*off, "--e2e-generated", "8")
    r = cli_recipe("--recipe", "paper", "--e2e-steps", "5", "--e2e-kl", "topk")
    assert (r.e2e.steps, r.e2e.kl) == (5, "topk")
    r = cli_recipe("--preset", "paper")  # the earlier name of --recipe
    cfg, calib, e2e = r.method_config, r.calib, r.e2e
    assert (calib.nsamples, calib.seqlen, cfg.epochs, cfg.s_param, e2e.steps) == (128, 2048, 20, "linear", 0)
    assert cfg.binary_init == "independent"  # the paper's
    assert (cfg.train_compile, e2e.compile) == ("off", "off")


def test_train_signs_is_a_switch_and_sign_lr_is_bounded():
    assert cli_recipe().e2e.train_signs is False
    e2e = cli_recipe("--e2e-train-signs", "--e2e-sign-lr", "0.05").e2e
    assert (e2e.train_signs, e2e.sign_lr) == (True, 0.05)
    assert cli_recipe("--train-signs").e2e.train_signs is True  # the earlier spelling
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["quantize", "m", "--e2e-sign-lr", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "flags",
    [["--e2e-steps", "-1"], ["--block-loss", "bogus"], ["--s-param", "cubic"], ["--e2e-lr", "0"], ["--epochs", "-2"]],
)
def test_settings_out_of_range_are_one_line_errors(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["quantize", "m", *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and flags[0] in err
