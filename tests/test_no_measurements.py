"""Numbers of a measurement live in benchmarks/results/ only: none in the package's code, help texts or recipes."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "ptq161"
# a number with a unit of time, memory, speed or ratio, or a decimal of 2+ places (a perplexity, a ratio)
MEASURED = re.compile(
    r"(?<![\w.])\d+(?:\.\d+)?\s?(?:%|x(?!\w)|ms\b|s\b|min\b|MiB|MB\b|GB\b|GiB|tok/s|tokens/s)"
    r"|(?<![\w.])\d+\.\d{2,}(?![\w.])"
)
# numbers that define or exemplify something rather than report a measurement: (file, text on the line)
DEFINITIONS = [
    ("__init__.py", "~1.61 bits/weight"),
    ("cli/common.py", "``3GB``, ``2.5G``, ``512MB``"),
    ("cli/common.py", "RAM budget, e.g. 3GB"),
    ("cli/common.py", "buffers of 1 MiB or more"),
    ("cli/convert.py", "(4x smaller than fp32) or grouped int4 (7x smaller)"),
    ("config.py", "The paper uses 128 x 2048 tokens"),
    ("data/corpora.py", "its last 20 % of"),
    ("eval/concentration.py", "0.01"),
    ("methods/block_training.py", "(10 % linear warm-up)"),
    ("methods/gptq.py", "damp 0.01"),
    ("methods/gptq.py", "damp: float = 0.01"),
    ("methods/billm.py", "damp: float = 0.01"),
    ("methods/gptq_math.py", "damp: float = 0.01"),
    ("methods/ptq161_math.py", "damp: float = 0.01"),
    ("methods/omniquant.py", "sigmoid(4) = 0.98"),
    ("methods/pbllm.py", "10 % salient weights"),
    ("methods/pbllm.py", "damp: float = 0.01"),
    ("methods/pbllm.py", "(1.7 at 10 %)"),
    ("methods/ptq161.py", "cosine with 10 % warm-up"),
    ("models/lazy.py", '``"3GB"``, ``"2.5G"``, ``"512MiB"``'),
    ("models/lazy.py", "give e.g. 3GB, 2.5G or 512MB"),
    ("models/lazy.py", "(up to 32 MB)"),
    ("models/lazy.py", "with a fixed 1 MiB threshold"),
    ("nn/int4.py", "CLIP_RATIOS"),
    ("nn/packed.py", "as many as fit 8 MiB of float32"),
    ("pipeline/preprocess.py", "(0.25 in the reference recipe)"),
    ("pipeline/report.py", "max-width:100%"),
    ("primitives/kernels.py", "<16 x float>"),
    ("primitives/kernels.py", "np.float32(0.0625)"),
    ("primitives/kernels.py", "(64 x G x 128 bytes)"),
    ("recipes/paper.toml", "activation streams of 128 x 2048 x hidden"),
]


def measured_lines(text: str, where: str) -> list[str]:
    """Lines of ``text`` with a measured-looking number that no ``DEFINITIONS`` entry of ``where`` covers."""
    allowed = [t for f, t in DEFINITIONS if f == where]
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        clean = line.replace("PTQ1.61", "")
        if MEASURED.search(clean) and not any(t in line for t in allowed):
            out.append(f"{where}:{i}: {line.strip()}")
    return out


def test_no_measured_number_in_the_package():
    found = []
    for path in sorted(SRC.rglob("*")):
        if path.suffix in (".py", ".toml", ".yaml"):
            found += measured_lines(path.read_text(), path.relative_to(SRC).as_posix())
    assert not found, "numbers of measurements belong in benchmarks/results/:\n" + "\n".join(found)


def test_the_check_finds_a_measurement():
    assert measured_lines('help="measured: 148.36 -> 148.58 ppl"', "x.py")
    assert measured_lines("took 22.3 min on 2 cores", "x.py")
    assert measured_lines("decode 3.50x dense", "x.py")
    assert not measured_lines("salient_ratio: float = 0.2", "x.py")
