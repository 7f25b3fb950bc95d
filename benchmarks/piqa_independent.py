"""FP PIQA through `ptq161 eval` vs an independent lm-eval run on the same local files.

The independent run uses no ptq161 code: lm-eval's own command line (``python -m lm_eval``)
with its ``hf`` model loading the cached SmolLM2-135M folder by path (dtype float32, batch
size 1, lm-eval's defaults otherwise) and a task YAML written here that reads the
original ``piqa/valid.jsonl`` and adds ``valid-labels.lst`` in ``process_docs``, with the
text, choices and metrics of lm-eval's built-in ``piqa`` task. ``ptq161 eval`` runs in a
second process. Both score all 1838 validation items.

Issue 7 quotes an earlier independent run whose model loading was not recorded (its numbers
and source are in ``results/references.json``); the per-item log-likelihoods of the run here show which items
are close enough to a tie to flip, and by how much.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import bench_parser, note, reference, stored, write_results
from ptq161.data.sources import resolve_data_dir
from ptq161.eval.report import markdown_table
from ptq161.models.loading import smollm2_dir

YAML = """task: piqa_independent
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {valid}
output_type: multiple_choice
validation_split: validation
process_docs: !function piqa_labels.add_labels
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

UTILS = """def add_labels(dataset):
    labels = [int(x) for x in open({labels!r}).read().split()]
    return dataset.add_column("label", labels)
"""


def independent_run(ddir: Path, work: Path, batch_size: int) -> tuple[dict, list[dict]]:
    """lm-eval's CLI on the raw PIQA files -> (metrics, samples)."""
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "piqa_independent.yaml").write_text(YAML.format(valid=ddir / "piqa" / "valid.jsonl"))
    (tasks / "piqa_labels.py").write_text(UTILS.format(labels=str(ddir / "piqa" / "valid-labels.lst")))
    out = work / "out"
    cmd = [
        sys.executable,
        "-m",
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={smollm2_dir()},dtype=float32",
        "--tasks",
        "piqa_independent",
        "--include_path",
        str(tasks),
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(out),
        "--log_samples",
    ]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, check=True, env=env, cwd=work)
    res = json.loads(Path(sorted(glob.glob(str(out / "**" / "results_*.json"), recursive=True))[-1]).read_text())
    samples_file = sorted(glob.glob(str(out / "**" / "samples_piqa_independent_*.jsonl"), recursive=True))[-1]
    samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    metrics = {k.split(",")[0]: v for k, v in res["results"]["piqa_independent"].items() if "," in k}
    return metrics, samples


def ptq161_run(work: Path, batch_size: int) -> dict:
    """`ptq161 eval smollm2-135m --tasks piqa` in its own process -> metrics."""
    out = work / "ptq161.json"
    cmd = [
        sys.executable,
        "-m",
        "ptq161",
        "eval",
        "smollm2-135m",
        "--tasks",
        "piqa",
        "--batch-size",
        str(batch_size),
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())["tasks"]["piqa"]


def loglikelihoods(sample: dict) -> np.ndarray:
    """The two choices' log-likelihoods of one lm-eval sample, float64 [2]."""
    return np.array([float(r[0]) for r in sample["filtered_resps"]], dtype=np.float64)


def near_ties(samples: list[dict]) -> dict:
    """Per-item decision margins of the independent run (nats; per character for acc_norm)."""
    acc_m, norm_m = [], []
    for s in samples:
        ll = loglikelihoods(s)
        doc = s["doc"]
        lens = np.array([len(doc["sol1"]), len(doc["sol2"])], dtype=np.float64)
        gold = int(s["target"])
        acc_m.append((abs(ll[0] - ll[1]), s["doc_id"], gold, int(np.argmax(ll))))
        norm_m.append((abs(ll[0] / lens[0] - ll[1] / lens[1]), s["doc_id"], gold, int(np.argmax(ll / lens))))
    out = {}
    for name, m in (("acc", acc_m), ("acc_norm", norm_m)):
        m.sort()
        out[name] = [{"doc": d, "margin": float(a), "gold": g, "pred": p, "correct": g == p} for a, d, g, p in m[:6]]
    return out


def acc_norm_by_length(samples: list[dict]) -> dict[str, int]:
    """Correct acc_norm counts of the independent run's log-likelihoods under other length definitions."""
    lengths = {
        "characters (lm-eval)": len,
        "characters + 1 (leading space)": lambda t: len(t) + 1,
        "UTF-8 bytes": lambda t: len(t.encode()),
        "characters, stripped": lambda t: len(t.strip()),
    }
    lls = [loglikelihoods(s) for s in samples]
    out = {}
    for name, f in lengths.items():
        correct = 0
        for s, ll in zip(samples, lls, strict=True):
            lens = np.array([f(s["doc"]["sol1"]), f(s["doc"]["sol2"])], dtype=np.float64)
            correct += int(np.argmax(ll / lens) == int(s["target"]))
        out[name] = correct
    return out


def render(store: dict, keep_meta: dict | None = None) -> str:
    """Tables and notes of the stored comparison; returns the tables."""
    ours, ind, n, quoted = store["ptq161"], store["independent"], store["items"], reference("piqa_issue7")
    rows = [
        ("ptq161 eval (local task files, in-memory model)", ours["acc"], ours["acc_norm"]),
        ("independent lm-eval CLI run (here)", ind["acc"], ind["acc_norm"]),
        ("independent run quoted in the issue (setup not recorded)", quoted["acc"], quoted["acc_norm"]),
    ]
    table = markdown_table(
        ["run", "acc", "acc_norm", "correct (acc / acc_norm)"],
        [(r, f"{a:.4f}", f"{b:.4f}", f"{round(a * n)} / {round(b * n)}") for r, a, b in rows],
    )
    tie_rows = [
        (metric, t["doc"], f"{t['margin']:.2e}", t["gold"], t["pred"], t["correct"])
        for metric, items in store["near_ties"].items()
        for t in items
    ]
    table += f"\n\nacc_norm of the independent run here with other length normalizations (correct of {n}):\n\n"
    table += markdown_table(["length", "correct"], list(store["acc_norm_correct_by_length"].items()))
    table += "\n\nSmallest decision margins of the independent run here (other numerics flip these first):\n\n"
    table += markdown_table(["metric", "doc", "margin", "gold", "pred", "correct"], tie_rows)
    notes = note(
        "piqa_independent",
        items=n,
        equal=store["equal"],
        ref_acc=quoted["acc"],
        ref_acc_norm=quoted["acc_norm"],
        ref_source=quoted["source"],
    )
    data = {k: v for k, v in store.items() if k != "quoted"}
    write_results(
        "piqa_independent",
        "FP PIQA (all items): ptq161 eval vs an independent lm-eval run",
        table,
        {**data, "quoted": quoted},
        notes,
        keep_meta=keep_meta,
        batch_size=store.get("settings", {}).get("batch_size", 1) if keep_meta else store["batch_size"],
    )
    return table


def main() -> None:
    ap = bench_parser(__doc__, redo=False)
    ap.add_argument("--batch-size", type=int, default=1, help="both runs (lm-eval's default is 1)")
    args = ap.parse_args()
    if args.render_only:
        saved = stored("piqa_independent")
        print(render(saved, keep_meta=saved))
        return
    ddir = resolve_data_dir(None).resolve()
    with tempfile.TemporaryDirectory(prefix="ptq161-piqa-") as tmp:
        work = Path(tmp)
        ind, samples = independent_run(ddir, work, args.batch_size)
        ours = ptq161_run(work, args.batch_size)
    equal = abs(ours["acc"] - ind["acc"]) < 1e-12 and abs(ours["acc_norm"] - ind["acc_norm"]) < 1e-12
    store = {
        "ptq161": ours,
        "independent": ind,
        "items": len(samples),
        "equal": equal,
        "near_ties": near_ties(samples),
        "acc_norm_correct_by_length": acc_norm_by_length(samples),
        "batch_size": args.batch_size,
    }
    print(render(store))


if __name__ == "__main__":
    main()
