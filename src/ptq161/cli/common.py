"""What the subcommands share: the one-line-error parser, option types, common options, and the
method options generated from the config dataclasses (``ptq161.config.option`` fields)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from ..errors import PTQ161Error
from ..methods import METHODS, Method

EXIT_USAGE = 2
EXIT_OS = 4  # the system refused a read or write (disk full, permissions)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2; no abbreviated flags (``--epoch`` is
    refused, not read as ``--epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

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


def add_data_dir(p: argparse._ActionsContainer) -> None:
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


def add_device(p: argparse._ActionsContainer) -> None:
    """``--device``."""
    p.add_argument("--device", default="cpu", type=device_name, help="torch device, e.g. cpu or cuda:0 (default: cpu)")


def memory_size(text: str) -> int:
    """``--max-memory`` values: ``3GB``, ``2.5G``, ``512MB`` -> bytes (argparse error otherwise)."""
    from ..models import parse_memory

    try:
        return parse_memory(text)
    except PTQ161Error as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_max_memory(p: argparse._ActionsContainer) -> None:
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


def add_load_options(p: argparse._ActionsContainer) -> None:
    """``--no-verify`` and ``--trust-remote-code``."""
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking the model's files against the sha256 recorded when they were written (ptq161 "
        "outputs, the model cache); saves reading every file once more",
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


def add_dtype(p: argparse._ActionsContainer) -> None:
    """``--dtype``."""
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the model's dense weights and activations (default: float32, the fastest on CPUs without "
        "native bfloat16); packed layers keep their stored fp16 factors",
    )


def torch_dtype(name: str) -> Any:
    """The torch dtype called ``name``."""
    import torch

    return getattr(torch, name)


@dataclasses.dataclass(frozen=True)
class SettingFlag:
    """One command-line flag and the setting it sets (for method settings: of one or more methods)."""

    flag: str
    dest: str  # the setting's flat name (``ptq161.pipeline.recipe``)
    kwargs: dict[str, Any]
    signature: tuple  # how the flag parses: identical for every method that declares it
    helps: dict[str, str]  # method name (or "" outside the method settings) -> help text
    aliases: tuple[str, ...] = ()


def _flag_kwargs(f: dataclasses.Field, hint: Any) -> tuple[dict[str, Any], tuple]:
    """(argparse type/choices, parse signature) of a config field from its annotation and ``option`` bounds."""
    meta = f.metadata["cli"]
    if typing.get_origin(hint) is Literal:
        choices = list(typing.get_args(hint))
        return {"choices": choices}, ("choices", *choices)
    if hint is bool:  # a switch: given = True, absent = None (the recipe's value applies)
        return {"action": "store_const", "const": True}, ("switch",)
    if hint in (int, float):
        bounds = (meta["minimum"], meta["maximum"], meta["exclusive"])
        return {"type": bounded(hint, *bounds)}, (hint.__name__, *bounds)
    if hint is str or str in typing.get_args(hint):
        return {"type": str}, ("str",)
    raise TypeError(f"config field {f.name}: no command-line type for {hint}")


def config_flags(config_cls: type, prefix: str = "", owner: str = "") -> list[SettingFlag]:
    """The flags of every ``option`` field of a config dataclass: ``--PREFIX-FIELD-NAME`` sets ``PREFIX_FIELD_NAME``."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if "cli" in f.metadata:
            meta = f.metadata["cli"]
            kwargs, signature = _flag_kwargs(f, hints[f.name])
            dest = prefix + f.name
            flag = "--" + dest.replace("_", "-")
            out.append(SettingFlag(flag, dest, kwargs, signature, {owner: meta["help"]}, meta["aliases"]))
    return out


def method_flags(methods: dict[str, type[Method]] = METHODS) -> list[SettingFlag]:
    """Every flag the methods' configs declare, merged by flag name (the same flag must parse the same way)."""
    merged: dict[str, SettingFlag] = {}
    for name, cls in methods.items():
        for sf in config_flags(cls.config_class, owner=name):
            if sf.flag not in merged:
                merged[sf.flag] = dataclasses.replace(sf, helps={})
            elif merged[sf.flag].signature != sf.signature:
                raise TypeError(f"{sf.flag} is declared with different types or bounds by several methods")
            merged[sf.flag].helps[name] = sf.helps[name]
            if sf.aliases and not merged[sf.flag].aliases:
                merged[sf.flag] = dataclasses.replace(merged[sf.flag], aliases=sf.aliases)
    return list(merged.values())


def _add_flags(g: argparse._ArgumentGroup, flags: list[SettingFlag]) -> None:
    """Each flag with its help (per method where several declare it), and its aliases hidden."""
    for sf in flags:
        helps = [f"{m}: {h}" if m else h for m, h in sf.helps.items()]
        g.add_argument(sf.flag, dest=sf.dest, help="; ".join(helps).replace("%", "%%"), **sf.kwargs)
        for alias in sf.aliases:
            g.add_argument(alias, dest=sf.dest, help=argparse.SUPPRESS, **sf.kwargs)


def add_setting_options(p: argparse.ArgumentParser, *, e2e: bool = True) -> list[SettingFlag]:
    """The recipe's settings as flags, grouped: calibration, method settings, end-to-end stage (``e2e``).

    Every flag left out keeps the recipe's value. Returns the flags (``overrides_from_args`` reads them).
    """
    from ..pipeline.recipe import SECTIONS

    flags = []
    for title, section in (("calibration", "calibration"), ("method settings", None), ("end-to-end stage", "e2e")):
        if section == "e2e" and not e2e:
            continue
        if section is None:
            group_flags = method_flags()
            desc = "a method takes only its own; unset: the recipe's value"
        else:
            config_cls, prefix = SECTIONS[section]
            group_flags = config_flags(config_cls, prefix)
            desc = "unset: the recipe's value" + ("; beyond the paper, PTQ1.61 only" if section == "e2e" else "")
        _add_flags(p.add_argument_group(title, desc), group_flags)
        flags += group_flags
    return flags


def overrides_from_args(args: argparse.Namespace, flags: list[SettingFlag]) -> dict[str, Any]:
    """The settings given on the command line, by flat name (``ptq161.pipeline.recipe.resolve_recipe``)."""
    return {sf.dest: getattr(args, sf.dest) for sf in flags if getattr(args, sf.dest, None) is not None}
