"""Recipes: everything that decides a quantization's result, as one typed, serializable object.

A ``Recipe`` holds the method and its settings, the calibration windows, the end-to-end stage
and the format of the embedding and head. Named recipes are TOML files shipped in
``ptq161/recipes/`` (``ptq161 recipes`` lists them); a recipe can also be read from any TOML
file of the same layout or from a finished output's ``ptq161.json``, which records the resolved
recipe, so ``ptq161 quantize MODEL --recipe OUT/ptq161.json`` repeats a run.

``resolve_recipe`` is the one place where a recipe and overrides become the settings of a run;
``ptq161.quantize`` and ``ptq161 quantize`` both call it. Overrides use flat names: a method
setting by its field name (``epochs``), a calibration setting as ``calib_<field>``
(``calib_nsamples``), an end-to-end setting as ``e2e_<field>`` (``e2e_steps``), plus ``method``
and ``head``. The command line's flags are the same names with dashes.

Layout of a recipe file::

    description = "..."
    method = "ptq161"
    [calibration]      # CalibConfig fields
    [method_settings]  # fields of the method's config
    [e2e]              # E2EConfig fields (steps = 0: no end-to-end stage)
    [output]           # head = "int8" | "int4" | "fp32" (absent: int8 when the method packs, else fp32)
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import CalibConfig
from ..errors import PTQ161Error
from ..methods import METHODS, MethodConfig, get_method
from ..nn import check_head_format
from .e2e import E2EConfig

DEFAULT_RECIPE = "cpu"
RECIPE_SUFFIX = ".toml"
# section of a recipe -> (its config class, the prefix of its settings' flat names)
SECTIONS: dict[str, tuple[type, str]] = {"calibration": (CalibConfig, "calib_"), "e2e": (E2EConfig, "e2e_")}
TOP_KEYS = ("name", "description", "method", "calibration", "method_settings", "e2e", "output")


@dataclass
class Recipe:
    """One quantization run's settings: ``method`` with ``method_config``, ``calib``, ``e2e``, ``head``.

    ``method_config`` None takes the method's defaults; ``head`` None becomes "int8" when the method
    packs, else "fp32". Validated on construction: an end-to-end stage needs a method that has one,
    a compressed head needs a packed format.
    """

    method: str = "ptq161"
    method_config: MethodConfig | None = None
    calib: CalibConfig = field(default_factory=CalibConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    head: str | None = None
    name: str = "custom"
    description: str = ""

    def __post_init__(self) -> None:
        cls = get_method(self.method)
        if self.method_config is None:
            self.method_config = cls.config_class()
        elif type(self.method_config) is not cls.config_class:
            raise PTQ161Error(
                f"method '{self.method}' takes a {cls.config_class.__name__}, got {type(self.method_config).__name__}"
            )
        impl = cls(self.method_config)
        if self.head is None:
            self.head = "int8" if impl.packs else "fp32"
        if check_head_format(self.head) != "fp32" and not impl.packs:
            raise PTQ161Error(f"head {self.head} needs a packed format; method '{self.method}' has none")
        if self.e2e.steps and not impl.trains_end_to_end:
            raise PTQ161Error(f"method '{self.method}' has no end-to-end stage (e2e_steps must be 0)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the layout of a recipe file with every setting filled in."""
        assert self.method_config is not None  # set in __post_init__
        return {
            "name": self.name,
            "description": self.description,
            "method": self.method,
            "calibration": self.calib.to_dict(),
            "method_settings": self.method_config.to_dict(),
            "e2e": self.e2e.to_dict(),
            "output": {"head": self.head},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> Recipe:
        """A recipe from ``to_dict``'s layout (sections may be partial or absent); unknown keys are errors."""
        unknown = set(d) - set(TOP_KEYS)
        if unknown:
            raise PTQ161Error(f"recipe {name or d.get('name')}: unknown keys {', '.join(sorted(unknown))}")
        method = d.get("method", "ptq161")
        out = d.get("output") or {}
        if set(out) - {"head"}:
            raise PTQ161Error(f"recipe {name or d.get('name')}: [output] takes only 'head'")
        return cls(
            method=method,
            method_config=get_method(method).config_class.from_dict(d.get("method_settings") or {}),
            calib=_section(CalibConfig, d.get("calibration") or {}),
            e2e=_section(E2EConfig, d.get("e2e") or {}),
            head=out.get("head"),
            name=name or d.get("name") or "custom",
            description=d.get("description", ""),
        )

    def settings(self) -> dict[str, Any]:
        """Every setting by its flat name (the keywords ``resolve_recipe`` takes as overrides)."""
        d = self.to_dict()
        flat = {"method": self.method, "head": self.head, **d["method_settings"]}
        for section, (_cls, prefix) in SECTIONS.items():
            flat.update({prefix + k: v for k, v in d[section].items()})
        return flat


def _section(config_cls: type, values: dict[str, Any]) -> Any:
    """``config_cls(**values)`` with a one-line error naming unknown settings."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(values) - names
    if unknown:
        raise PTQ161Error(f"unknown {config_cls.__name__} settings: {', '.join(sorted(unknown))}")
    return config_cls(**values)


def recipe_names() -> list[str]:
    """The recipes shipped with the package (``ptq161/recipes/NAME.toml``), sorted."""
    folder = resources.files("ptq161") / "recipes"
    return sorted(p.name.removesuffix(RECIPE_SUFFIX) for p in folder.iterdir() if p.name.endswith(RECIPE_SUFFIX))


def recipe_text(name: str) -> str:
    """The TOML text of the shipped recipe ``name``."""
    if name not in recipe_names():
        raise PTQ161Error(f"unknown recipe '{name}'; shipped recipes: {', '.join(recipe_names())} (or a file path)")
    return (resources.files("ptq161") / "recipes" / f"{name}{RECIPE_SUFFIX}").read_text()


def read_recipe(source: str | Path) -> Recipe:
    """A recipe from a shipped name, a TOML file, a ``ptq161.json`` (its ``recipe``) or an output directory."""
    path = Path(source)
    if isinstance(source, str) and source in recipe_names():
        return Recipe.from_dict(_parse_toml(recipe_text(source), source), name=source)
    if path.is_dir():
        path = path / "ptq161.json"
    if not path.is_file():
        raise PTQ161Error(f"recipe '{source}' is neither a shipped recipe ({', '.join(recipe_names())}) nor a file")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PTQ161Error(f"recipe {path}: not valid JSON ({e})") from None
        if "recipe" not in d:
            raise PTQ161Error(f"{path} records no recipe (written by an older ptq161 or not a ptq161 output)")
        return Recipe.from_dict(d["recipe"])
    return Recipe.from_dict(_parse_toml(text, str(path)), name=str(path))


def _parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PTQ161Error(f"recipe {where}: not valid TOML ({e})") from None


def resolve_recipe(recipe: str | Path | Recipe | None = None, **overrides: Any) -> Recipe:
    """The recipe ``recipe`` (default ``DEFAULT_RECIPE``) with ``overrides`` (flat names) applied.

    Changing ``method`` keeps the settings the recipe chose for its method (those that differ from that
    method's defaults) that the new method also has (e.g. ``epochs``), but not its end-to-end stage (a
    baseline runs as its paper describes it): ``e2e_steps`` adds one where the new method has one (ptq161,
    gptq, omniquant). An end-to-end setting given while the stage ends up off is refused, as is a setting
    no section has.
    """
    base = recipe if isinstance(recipe, Recipe) else read_recipe(recipe or DEFAULT_RECIPE)
    d = base.to_dict()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    given = dict(overrides)
    method = overrides.pop("method", d["method"])
    cls = get_method(method)
    if method != d["method"]:  # carry the settings the recipe chose (not its method's defaults) that the new one has
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        old_defaults = get_method(d["method"]).config_class().to_dict()
        chosen = {k: v for k, v in d["method_settings"].items() if v != old_defaults.get(k)}
        d["method_settings"] = {k: v for k, v in chosen.items() if k in names}
        d["e2e"]["steps"] = 0  # the recipe's stage was chosen for its method: e2e_steps runs one for the new
        d["output"]["head"] = None  # back to the new method's default
        d["method"] = method
    e2e_given = [k for k in overrides if k.startswith("e2e_") and k != "e2e_steps"]
    for key, value in overrides.items():
        section, name = setting_place(key, cls)
        d[section][name] = value
    if e2e_given and not d["e2e"]["steps"]:
        has = cls(cls.config_class(**d["method_settings"])).trains_end_to_end
        why = "e2e_steps is 0" if has else f"method '{method}' has none"
        names = ", ".join(spelled(k) for k in e2e_given)
        raise PTQ161Error(f"{names}: end-to-end settings while the stage is off ({why})")
    if given:
        d["description"] = f"{d['description']} With overrides: " + ", ".join(
            f"{k}={given[k]!r}" for k in sorted(given)
        )
    return Recipe.from_dict(d, name=d["name"])


def setting_place(key: str, method_cls: type) -> tuple[str, str]:
    """(section, field) of the flat setting name ``key`` for a recipe of ``method_cls``, or a one-line error."""
    if key == "head":
        return "output", "head"
    for section, (config_cls, prefix) in SECTIONS.items():
        if key.startswith(prefix):
            name = key.removeprefix(prefix)
            if name in {f.name for f in dataclasses.fields(config_cls)}:
                return section, name
    if key in {f.name for f in dataclasses.fields(method_cls.config_class)}:
        return "method_settings", key
    owners = [m for m, c in METHODS.items() if key in {f.name for f in dataclasses.fields(c.config_class)}]
    if owners:
        raise PTQ161Error(
            f"method '{method_cls.name}' has no setting {spelled(key)} (methods with it: {', '.join(owners)})"
        )
    raise PTQ161Error(f"unknown setting {spelled(key)} (`ptq161 recipes --settings` lists them)")


def spelled(key: str) -> str:
    """A setting's flat name with its command-line flag, for messages: ``e2e_kl (--e2e-kl)``."""
    return f"{key} (--{key.replace('_', '-')})"
