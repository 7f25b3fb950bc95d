"""The README's results table, generated from the results JSON (never typed by hand).

    .venv/bin/python -m benchmarks.readme_table           # rewrite the table in README.md
    .venv/bin/python -m benchmarks.readme_table --check   # exit 1 if README.md's table differs

tests/test_readme.py checks that README.md holds exactly this table.
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

# (results file, row name, label); the row "fp" is the file's full-precision reference
COMPARE_ROWS = [
    ("fp", "FP (dequantized GGUF)"),
    ("ptq161", "**PTQ1.61, `ptq161 quantize MODEL`**"),
    ("arb", "ARB-LLM (RC)"),
    ("pbllm", "PB-LLM"),
    ("omniquant_w2_g128", "OmniQuant W2 g128"),
    ("gptq_w2_g128", "GPTQ W2 g128"),
    ("gptq_w3_g128", "GPTQ W3 g128"),
]
TABLES = [("smollm2-135m", "compare"), ("qwen2.5-coder-0.5b", "compare_qwen2.5-coder-0.5b")]


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
    for model, name in TABLES:
        d = _load(name)
        fp = d["fp"]
        src = f"[{name}.md](benchmarks/results/{name}.md): {_machine(d)}"
        for row, label in COMPARE_ROWS:
            if row == "fp":
                lines.append(_row(model, label, "16", fp["wikitext2"], fp["c4"], fp, src))
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
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The part of ``text`` between the markers (without them), or an error when they are missing."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not the generated one")
    args = ap.parse_args()
    text = README.read_text()
    want = table()
    if args.check:
        sys.exit(0 if readme_block(text) == want else 1)
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{want}\n{END}{rest.split(END, 1)[1]}")
    print(want)


if __name__ == "__main__":
    main()
