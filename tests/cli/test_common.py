import argparse
import dataclasses

import pytest
import torch

from ptq161.cli import build_parser
from ptq161.cli.common import method_config, method_flags
from ptq161.errors import PTQ161Error
from ptq161.methods import METHODS


def test_every_flag_sets_a_real_config_field_and_every_option_field_has_a_flag():
    flags = method_flags()
    for mf in flags:
        for method, field in mf.fields.items():
            assert field in {f.name for f in dataclasses.fields(METHODS[method].config_class)}
    declared = {
        (name, f.name)
        for name, cls in METHODS.items()
        for f in dataclasses.fields(cls.config_class)
        if "cli" in f.metadata
    }
    assert declared == {(m, f) for mf in flags for m, f in mf.fields.items()}
    by_flag = {mf.flag: mf for mf in flags}
    assert set(by_flag["--ratio"].fields) == {"ptq161", "pbllm"}  # one flag, two methods, same parsing
    assert set(by_flag["--bits"].fields) == {"rtn", "gptq", "awq", "omniquant"}


def test_method_config_takes_the_methods_own_flags_and_refuses_others():
    parser = build_parser()
    args = parser.parse_args(["quantize", "m", "--method", "rtn", "--bits", "3", "--group-size", "16"])
    cfg = method_config(args, METHODS["rtn"], {"epochs": 5})  # epochs: not an rtn field, ignored
    assert (cfg.bits, cfg.group_size) == (3, 16)
    args = parser.parse_args(["quantize", "m", "--ratio", "0.3"])
    cfg = method_config(args, METHODS["ptq161"], {"epochs": 5})
    assert (cfg.salient_ratio, cfg.epochs) == (0.3, 5)
    args = parser.parse_args(["quantize", "m", "--method", "billm", "--bits", "3"])
    with pytest.raises(PTQ161Error, match="method 'billm' does not take --bits"):
        method_config(args, METHODS["billm"], {})


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


def test_cpu_preset_settings_and_the_paper_one_flag_away():
    from ptq161.cli.quantize import settings

    parser = build_parser()
    cfg, calib, e2e = settings(parser.parse_args(["quantize", "m"]))
    assert (calib.nsamples, calib.seqlen, cfg.epochs) == (64, 256, 10)
    assert (cfg.s_param, cfg.lr_s, e2e.steps, e2e.windows, e2e.generated) == ("log", 1e-2, 600, 256, 0)
    assert (cfg.compile, e2e.compile) == ("auto", "auto")  # compiled where the machine has a compiler
    assert cfg.init == "gptq"  # signs and codes with GPTQ error feedback
    assert settings(parser.parse_args(["quantize", "m", "--binary-init", "independent"]))[0].init == "independent"
    cfg, _, e2e = settings(parser.parse_args(["quantize", "m", "--train-compile", "off", "--e2e-compile", "on"]))
    assert (cfg.compile, e2e.compile) == ("off", "on")
    cfg, _, e2e = settings(parser.parse_args(["quantize", "m", "--s-param", "linear", "--e2e-steps", "0"]))
    assert (cfg.s_param, e2e.steps) == ("linear", 0)
    _, _, e2e = settings(parser.parse_args(["quantize", "m", "--e2e-windows", "64", "--e2e-generated", "192"]))
    assert (e2e.steps, e2e.windows, e2e.generated) == (600, 64, 192)  # flags override the preset's settings
    cfg, _, e2e = settings(parser.parse_args(["quantize", "m", "--method", "rtn"]))  # no end-to-end stage
    assert e2e.steps == 0 and not hasattr(cfg, "s_param")
    for off in (["--method", "rtn"], ["--e2e-steps", "0"], ["--preset", "paper"]):  # the stage is off: refused
        with pytest.raises(PTQ161Error, match="--e2e-generated: end-to-end setting"):
            settings(parser.parse_args(["quantize", "m", *off, "--e2e-generated", "8"]))
    _, _, e2e = settings(
        parser.parse_args(["quantize", "m", "--preset", "paper", "--e2e-steps", "5", "--e2e-kl", "topk"])
    )
    assert (e2e.steps, e2e.kl) == (5, "topk")
    cfg, calib, e2e = settings(parser.parse_args(["quantize", "m", "--preset", "paper"]))
    assert (calib.nsamples, calib.seqlen, cfg.epochs, cfg.s_param, e2e.steps) == (128, 2048, 20, "linear", 0)
    assert cfg.init == "independent"  # the paper's
    assert (cfg.compile, e2e.compile) == ("off", "off")


def test_train_signs_is_a_switch_and_sign_lr_is_bounded():
    from ptq161.cli.quantize import settings

    parser = build_parser()
    assert settings(parser.parse_args(["quantize", "m"]))[2].train_signs is False
    _, _, e2e = settings(parser.parse_args(["quantize", "m", "--train-signs", "--sign-lr", "0.05"]))
    assert (e2e.train_signs, e2e.sign_lr) == (True, 0.05)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["quantize", "m", "--sign-lr", "0"])
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
