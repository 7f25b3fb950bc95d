"""``ptq161 recipes``: the shipped recipes, one recipe in full, and every setting a recipe has."""

from __future__ import annotations

import argparse
import json

from ..methods import METHODS
from ..pipeline.recipe import DEFAULT_RECIPE, SECTIONS, read_recipe, recipe_names, recipe_text
from .common import config_flags, method_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "recipes",
        help="list the shipped recipes, or show one",
        description="Without RECIPE: each shipped recipe and what it is for. With RECIPE (a name, a TOML file or an "
        "output's ptq161.json): its file, then every setting it resolves to (--json: the resolved recipe only).",
    )
    p.add_argument("recipe", nargs="?", help="a shipped recipe's name, a recipe TOML file or a ptq161.json")
    p.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")
    p.add_argument("--settings", action="store_true", help="list every setting name (flag and Python keyword)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print recipes or settings."""
    if args.settings:
        print(settings_table())
        return 0
    if args.recipe is None:
        for name in recipe_names():
            r = read_recipe(name)
            mark = " (default)" if name == DEFAULT_RECIPE else ""
            print(f"{name}{mark}: {r.description}\n")
        print("ptq161 recipes NAME shows one in full; ptq161 quantize MODEL --recipe NAME runs it.")
        return 0
    r = read_recipe(args.recipe)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    if args.recipe in recipe_names():
        print(f"# {args.recipe}.toml\n{recipe_text(args.recipe)}")
    print(f"# resolved: every setting (flat name = value)\n{r.description}")
    for key, value in r.settings().items():
        print(f"  {key} = {value!r}")
    return 0


def settings_table() -> str:
    """Every setting: its flag (the Python keyword with dashes) and help, grouped like ``quantize --help``."""
    lines = ["method  (--method): " + ", ".join(sorted(METHODS)), "head    (--head): int8, int4, fp32"]
    groups = [("calibration", config_flags(*SECTIONS["calibration"])), ("method settings", method_flags())]
    groups.append(("end-to-end stage", config_flags(*SECTIONS["e2e"])))
    for title, flags in groups:
        lines.append(f"\n{title}:")
        for sf in flags:
            owners = f" [{', '.join(m for m in sf.helps if m)}]" if any(sf.helps) else ""
            lines.append(f"  {sf.dest:<20} {sf.flag}{owners}")
    return "\n".join(lines)
