"""What the subcommands share: the one-line-error parser, option types, common options, and the
method options generated from the config dataclasses (``ptq161.config.option`` fields)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from ..errors import PTQ161Error
from ..methods import METHODS, Method, MethodConfig

EXIT_USAGE = 2
EXIT_OS = 4  # the system refused a read or write (disk full, permissions)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def bounded(
    kind: type, minimum: float | None = None, maximum: float | None = None, exclusive: bool = False
) -> Callable[[str], Any]:
    """argparse type: an int or float within the bounds (open bounds when ``exclusive``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        if exclusive and ((minimum is not None and value <= minimum) or (maximum is not None and value >= maximum)):
            raise argparse.ArgumentTypeError(f"must be in ({minimum}, {maximum}), got {value}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected a number <= {maximum}, got {value}")
        return value

    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)


def csv_list(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """``--data-dir``."""
    p.add_argument("--data-dir", help="data directory laid out like shared/data (default: $PTQ161_DATA)")


def device_name(name: str) -> str:
    """A torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``), else an argparse error."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"'{name}' is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(
            f"no CUDA device '{name}' on this machine (torch sees {torch.cuda.device_count()})"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("no MPS device on this machine")
    return name


def add_device(p: argparse.ArgumentParser) -> None:
    """``--device``."""
    p.add_argument("--device", default="cpu", type=device_name, help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def memory_size(text: str) -> int:
    """``--max-memory`` values: ``3GB``, ``2.5G``, ``512MB`` -> bytes (argparse error otherwise)."""
    from ..models import parse_memory

    try:
        return parse_memory(text)
    except PTQ161Error as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_max_memory(p: argparse.ArgumentParser) -> None:
    """``--max-memory``."""
    p.add_argument(
        "--max-memory",
        type=memory_size,
        default=None,
        help="RAM budget, e.g. 3GB (default: the RAM available now). A model whose weights take more than "
        "half of it is onloaded block by block: one decoder layer in memory at a time, read from its "
        "safetensors files (slower, same numbers). With a budget, buffers of 1 MiB or more are returned to the "
        "system as soon as they are freed",
    )


def add_load_options(p: argparse.ArgumentParser) -> None:
    """``--no-verify`` and ``--trust-remote-code``."""
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking the model's files against the sha256 recorded when they were written (ptq161 "
        "outputs, the model cache); saves about a second per GB read",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a model directory's own Python code (auto_map in its config) to run; without it such a "
        "model is refused",
    )


def load_options(args: argparse.Namespace) -> dict[str, bool]:
    """The ``verify`` / ``trust_remote_code`` keywords of the loading functions, from the flags."""
    return {"verify": not args.no_verify, "trust_remote_code": args.trust_remote_code}


def add_dtype(p: argparse.ArgumentParser) -> None:
    """``--dtype``."""
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the model's dense weights and activations (default: float32; on a CPU float32 is the "
        "fastest, bfloat16 about 3x slower); packed layers keep their stored fp16 factors",
    )


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name``."""
    import torch

    return getattr(torch, name)


@dataclasses.dataclass(frozen=True)
class MethodFlag:
    """One command-line flag and the config fields (of one or more methods) it sets."""

    flag: str
    kwargs: dict[str, Any]
    signature: tuple  # how the flag parses: identical for every method that declares it
    fields: dict[str, str]  # method name -> config field name
    helps: dict[str, str]  # method name -> help text

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _flag_kwargs(f: dataclasses.Field, hint: Any) -> tuple[dict[str, Any], tuple]:
    """(argparse type/choices, parse signature) of a config field from its annotation and ``option`` bounds."""
    meta = f.metadata["cli"]
    if typing.get_origin(hint) is Literal:
        choices = list(typing.get_args(hint))
        return {"choices": choices}, ("choices", *choices)
    if hint is bool:  # a switch: given = True, absent = None (the config's default applies)
        return {"action": "store_const", "const": True}, ("switch",)
    if hint in (int, float):
        bounds = (meta["minimum"], meta["maximum"], meta["exclusive"])
        return {"type": bounded(hint, *bounds)}, (hint.__name__, *bounds)
    raise TypeError(f"config field {f.name}: no command-line type for {hint}")


def config_flags(config_cls: type) -> list[tuple[str, str, dict[str, Any], tuple, str]]:
    """(flag, field name, argparse kwargs, parse signature, help) of every ``option`` field of a config dataclass."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if "cli" in f.metadata:
            meta = f.metadata["cli"]
            kwargs, signature = _flag_kwargs(f, hints[f.name])
            out.append((meta["flag"] or "--" + f.name.replace("_", "-"), f.name, kwargs, signature, meta["help"]))
    return out


def method_flags(methods: dict[str, type[Method]] = METHODS) -> list[MethodFlag]:
    """Every flag the methods' configs declare, merged by flag name (the same flag must parse the same way)."""
    merged: dict[str, MethodFlag] = {}
    for name, cls in methods.items():
        for flag, field_name, kwargs, signature, help_text in config_flags(cls.config_class):
            if flag not in merged:
                merged[flag] = MethodFlag(flag, kwargs, signature, {}, {})
            elif merged[flag].signature != signature:
                raise TypeError(f"{flag} is declared with different types or bounds by several methods")
            merged[flag].fields[name], merged[flag].helps[name] = field_name, help_text
    return list(merged.values())


def add_config_options(p: argparse.ArgumentParser, config_cls: type, title: str) -> None:
    """The flags of one config dataclass's ``option`` fields, as an argument group."""
    g = p.add_argument_group(title)
    for flag, field_name, kwargs, _sig, help_text in config_flags(config_cls):
        default = next(f.default for f in dataclasses.fields(config_cls) if f.name == field_name)
        help_text = f"{help_text} (default: {default})".replace("%", "%%")  # argparse formats help
        g.add_argument(flag, dest=field_name, help=help_text, **kwargs)


def config_from_args(args: argparse.Namespace, config_cls: type, defaults: dict[str, Any]) -> Any:
    """A config from the flags given over ``defaults`` over the dataclass defaults."""
    values = dict(defaults)
    for _flag, field_name, *_ in config_flags(config_cls):
        if getattr(args, field_name, None) is not None:
            values[field_name] = getattr(args, field_name)
    return config_cls(**values)


def add_method_options(p: argparse.ArgumentParser) -> None:
    """The flags of every method's config; each method accepts only its own (checked in ``method_config``)."""
    g = p.add_argument_group("method options (generated from each method's config)")
    for mf in method_flags():
        help_text = "; ".join(f"{m}: {h}" for m, h in mf.helps.items()).replace("%", "%%")  # argparse formats help
        g.add_argument(mf.flag, dest=mf.dest, help=help_text, **mf.kwargs)


def options_of(method: str) -> str:
    """The flags that ``method`` accepts, for help texts and errors."""
    return ", ".join(mf.flag for mf in method_flags() if method in mf.fields) or "no options"


def method_config(args: argparse.Namespace, method_cls: type[Method], defaults: dict[str, Any]) -> MethodConfig:
    """The method's config from the flags given (refusing flags it does not take) over ``defaults``."""
    names = {f.name for f in dataclasses.fields(method_cls.config_class)}
    values = {k: v for k, v in defaults.items() if k in names}
    for mf in method_flags():
        value = getattr(args, mf.dest, None)
        if value is None:
            continue
        if method_cls.name not in mf.fields:
            raise PTQ161Error(
                f"method '{method_cls.name}' does not take {mf.flag} (it takes: {options_of(method_cls.name)})"
            )
        values[mf.fields[method_cls.name]] = value
    return method_cls.config_class(**values)
