"""The README's tables, generated from the results JSON (never typed by hand): the results table and
the table of model families.

    .venv/bin/python -m benchmarks.readme_table           # rewrite the tables in README.md
    .venv/bin/python -m benchmarks.readme_table --check   # exit 1 if a table in README.md differs

tests/test_readme.py checks that README.md holds exactly these tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- results-table: begin (benchmarks/readme_table.py) -->", "<!-- results-table: end -->"
FAMILIES_BEGIN = "<!-- families-table: begin (benchmarks/readme_table.py) -->"
FAMILIES_END = "<!-- families-table: end -->"

# (row name, label) of the method comparison (calibrated on WikiText-2, the papers' protocol); the row "fp"
# is the file's full-precision reference
COMPARE_ROWS = [
    ("fp", "FP (dequantized GGUF)"),
    ("ptq161", "PTQ1.61, `--calib wikitext2`"),
    ("arb", "ARB-LLM (RC)"),
    ("pbllm", "PB-LLM"),
    ("omniquant_w2_g128", "OmniQuant W2 g128"),
    ("gptq_w3_g128", "GPTQ W3 g128"),
]
README_ANCHORS = ("IQ1_M", "IQ2_XXS")  # llama.cpp's types at <= 2.1 bits that beat ptq161 at 1.5B: the bar
DEFAULT_LABEL = "**PTQ1.61, `ptq161 quantize MODEL`**"  # the default command: general calibration
# model, its method comparison, its general-calibration results (the default command's row "cpu_mix")
TABLES = [
    ("smollm2-135m", "compare", "general_calibration"),
    ("qwen2.5-coder-0.5b", "compare_qwen2.5-coder-0.5b", "general_calibration_qwen2.5-coder-0.5b"),
]


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _machine(d: dict[str, Any]) -> str:
    m = d["machine"]
    return f"{m.get('cpu_model', '?')} ({m.get('torch_cpu_capability', '?')}), {d['date'][:10]}"


def _row(model: str, label: str, bits: str, wt: float, c4: float, fp: dict[str, float], source: str) -> str:
    ratio = max(wt / fp["wikitext2"], c4 / fp["c4"])
    return f"| {model} | {label} | {bits} | {wt:.2f} | {c4:.2f} | {ratio:.1f}x | {source} |"


def table() -> str:
    """The Markdown table: every row's WikiText-2 and C4 perplexity (8 windows of 2048 tokens) side by side."""
    lines = [
        "| model | method | bits / weight (decoder linears) | WikiText-2 | C4 | x FP (worse of the two) | results |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, name, general in TABLES:
        d = _load(name)
        fp = d["fp"]
        src = f"[{name}.md](benchmarks/results/{name}.md): {_machine(d)}"
        for row, label in COMPARE_ROWS:
            if row == "fp":
                lines.append(_row(model, label, "16", fp["wikitext2"], fp["c4"], fp, src))
                g = _load(general) if (RESULTS / f"{general}.json").is_file() else {"rows": {}}
                if "cpu_mix" in g["rows"]:
                    r, gsrc = g["rows"]["cpu_mix"], f"[{general}.md](benchmarks/results/{general}.md): {_machine(g)}"
                    bits = f"{r['stored_bits_per_weight']:.2f}"
                    lines.append(_row(model, DEFAULT_LABEL, bits, r["wikitext2_ppl"], r["c4_ppl"], fp, gsrc))
            elif row in d["rows"]:
                r = d["rows"][row]
                bits = f"{r['stored_bits_per_weight']:.2f}"
                lines.append(_row(model, label, bits, r["wikitext2_ppl"], r["c4_ppl"], fp, src))
    d = _load("large_model")
    fp = {"wikitext2": d["steps"]["fp"]["wikitext2_ppl"], "c4": d["steps"]["fp"]["c4_ppl"]}
    src = f"[large_model.md](benchmarks/results/large_model.md): {_machine(d)}"
    q = d["steps"]["ptq161_ppl"]
    bits = f"{d['steps']['ptq161']['stored_bits_per_weight']:.2f}"
    lines.append(_row("qwen2.5-coder-1.5b", "FP (dequantized GGUF)", "16", fp["wikitext2"], fp["c4"], fp, src))
    label = "PTQ1.61, `--recipe large --max-memory 3GB`"
    lines.append(_row("qwen2.5-coder-1.5b", label, bits, q["wikitext2_ppl"], q["c4_ppl"], fp, src))
    anchors = "llamacpp_anchors_qwen2.5-coder-1.5b"
    if (RESULTS / f"{anchors}.json").is_file():  # the bar: llama.cpp's 1-2-bit types on the same windows
        a = _load(anchors)
        asrc = f"[{anchors}.md](benchmarks/results/{anchors}.md): {_machine(a)}"
        for name, r in a["rows"].items():
            if name in README_ANCHORS:
                label, bits = f"llama.cpp {name} + imatrix", f"{r['decoder_linear_bits']:.2f}"
                lines.append(_row("qwen2.5-coder-1.5b", label, bits, r["ppl"]["wikitext2"], r["ppl"]["c4"], fp, asrc))
    return "\n".join(lines)


def families_table() -> str:
    """One line per model family of results/families.json: do the perplexity paths agree, which methods
    quantize it, does the fused engine serve it (else the first of its reasons)."""
    d = _load("families")
    lines = [
        "| family | transformers class | in memory = onloaded = transformers | methods | fused engine |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        spread = max(r["fp_spread"], r["ptq161_spread"] or 0.0)
        agree = f"yes (within {spread:.0e})" if spread < 1e-4 else f"**no** ({spread:.1e})"
        refused = [m for m, v in r["methods"].items() if v != "ok"]
        methods = "all" if not refused else f"all but {', '.join(refused)} (refused)"
        engine = (
            "yes" if r["engine"] == "same tokens" else "no: " + r["engine"].removeprefix("refused: ").split(" (")[0]
        )
        lines.append(f"| {r['family']} | `{r['class']}` | {agree} | {methods} | {engine} |")
    return "\n".join(lines)


BLOCKS = {"results": (BEGIN, END, table), "families": (FAMILIES_BEGIN, FAMILIES_END, families_table)}


def readme_block(text: str, block: str = "results") -> str:
    """The part of ``text`` between a block's markers (without them), or an error when they are missing."""
    begin, end, _ = BLOCKS[block]
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not the generated one")
    args = ap.parse_args()
    text = README.read_text()
    if args.check:
        sys.exit(0 if all(readme_block(text, b) == make() for b, (_, _, make) in BLOCKS.items()) else 1)
    for block, (begin, end, make) in BLOCKS.items():
        readme_block(text, block)  # both markers present
        head, rest = text.split(begin, 1)
        text = f"{head}{begin}\n{make()}\n{end}{rest.split(end, 1)[1]}"
    README.write_text(text)
    print(text.split(FAMILIES_BEGIN, 1)[1].split(FAMILIES_END, 1)[0])


if __name__ == "__main__":
    main()
