"""Zero-shot tasks of the paper's Table 2 through lm-evaluation-harness, fully offline.

The task definitions are lm-eval's own (prompts, choices, metrics, version 1.0), shipped
as YAML files in ``ptq161/eval/tasks`` whose dataset is a local JSON-lines file. The raw
files of the data directory (laid out like ../shared/data) are converted once per run into
the field names lm-eval's hub datasets use; the YAMLs are written next to them and loaded
with ``TaskManager(include_path=..., include_defaults=False)``.

Differences from lm-eval's hub data, all in the inputs (never in the metrics):

* HellaSwag: the only local copy is llama.cpp's text format (``activity_label: ctx``,
  label, 4 endings), cleaned by its authors: the tags ``[header]``, ``[step]``,
  ``[substeps]``, ``[title]`` removed and double spaces collapsed. lm-eval instead builds
  ``ctx_a + " " + ctx_b.capitalize()``, turns `` [title]`` into ``". "`` and drops every
  ``[...]``. So here the start of ``ctx_b`` is not capitalised ("... on a roof. he" where
  lm-eval has "... on a roof. He") and a former ``[title]`` leaves no period. lm-eval's
  ``preprocess`` is applied on top (a no-op on most documents).
* RACE is not available offline here: it is reported as unavailable, never faked.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from ..data import sources
from ..errors import DataError, PTQ161Error
from ..parallel import World

UNAVAILABLE = {"race": "RACE is not in the data directory (no offline copy of the dataset exists here)"}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _piqa(ddir: Path) -> list[dict]:
    docs = _jsonl(ddir / "piqa" / "valid.jsonl")
    labels = (ddir / "piqa" / "valid-labels.lst").read_text().split()
    if len(labels) != len(docs):
        raise DataError(f"piqa: {len(docs)} questions but {len(labels)} labels")
    return [
        {"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(lab)}
        for d, lab in zip(docs, labels, strict=True)
    ]


def _arc(part: str) -> Callable[[Path], list[dict]]:
    def convert(ddir: Path) -> list[dict]:
        out = []
        for d in _jsonl(ddir / "arc" / part / f"{part}-Test.jsonl"):
            choices = d["question"]["choices"]
            out.append(
                {
                    "id": d["id"],
                    "question": d["question"]["stem"],
                    "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
                    "answerKey": d["answerKey"],
                }
            )
        return out

    return convert


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text cleanup (strip, `` [title]`` -> ``". "``, drop ``[...]``, collapse double spaces)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def parse_hellaswag_text(text: str) -> list[dict]:
    """llama.cpp's HellaSwag text format (6 lines per task) -> ``{query, choices [4], label}`` docs."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"hellaswag: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    docs = []
    for i in range(0, len(lines), 6):
        ctx, label, *endings = lines[i : i + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise DataError(f"hellaswag: line {i + 2} should be a label 0-3, got {label[:40]!r}")
        docs.append(
            {
                "query": hellaswag_preprocess(ctx),
                "choices": [hellaswag_preprocess(e) for e in endings],
                "label": int(label),
            }
        )
    return docs


def _hellaswag(ddir: Path) -> list[dict]:
    return parse_hellaswag_text((ddir / "hellaswag" / "hellaswag_val_full.txt").read_text(encoding="utf-8"))


def _winogrande(ddir: Path) -> list[dict]:
    keep = ("sentence", "option1", "option2", "answer")
    return [{k: d[k] for k in keep} for d in _jsonl(ddir / "winogrande_1.1" / "dev.jsonl")]


def _lambada_openai(ddir: Path) -> list[dict]:
    return [{"text": d["text"]} for d in _jsonl(ddir / "lambada_openai" / "lambada_test.jsonl")]


def _lambada_standard(ddir: Path) -> list[dict]:
    lines = (ddir / "lambada_standard" / "lambada_test_plain_text.txt").read_text(encoding="utf-8").splitlines()
    return [{"text": line} for line in lines if line.strip()]


@dataclass(frozen=True)
class LocalTask:
    """A paper task: the lm-eval task it mirrors, its local source and how many documents it has."""

    name: str
    source: str  # relative to the data directory
    n_docs: int
    convert: Callable[[Path], list[dict]]
    metrics: tuple[str, ...]


TASKS: dict[str, LocalTask] = {
    t.name: t
    for t in (
        LocalTask("piqa", "piqa/valid.jsonl", 1838, _piqa, ("acc", "acc_norm")),
        LocalTask("arc_easy", "arc/ARC-Easy/ARC-Easy-Test.jsonl", 2376, _arc("ARC-Easy"), ("acc", "acc_norm")),
        LocalTask(
            "arc_challenge",
            "arc/ARC-Challenge/ARC-Challenge-Test.jsonl",
            1172,
            _arc("ARC-Challenge"),
            ("acc", "acc_norm"),
        ),
        LocalTask("hellaswag", "hellaswag/hellaswag_val_full.txt", 10042, _hellaswag, ("acc", "acc_norm")),
        LocalTask("winogrande", "winogrande_1.1/dev.jsonl", 1267, _winogrande, ("acc",)),
        LocalTask("lambada_openai", "lambada_openai/lambada_test.jsonl", 5153, _lambada_openai, ("acc", "perplexity")),
        LocalTask(
            "lambada_standard",
            "lambada_standard/lambada_test_plain_text.txt",
            5153,
            _lambada_standard,
            ("acc", "perplexity"),
        ),
    )
}
PAPER_TASKS = (*TASKS, "race")


def parse_tasks(spec: str) -> list[str]:
    """Comma-separated task names -> list; unknown names raise a one-line error."""
    names = [t.strip() for t in spec.split(",") if t.strip()]
    if not names:
        raise PTQ161Error("no tasks given")
    bad = [t for t in names if t not in TASKS and t not in UNAVAILABLE]
    if bad:
        raise PTQ161Error(f"unknown task(s) {', '.join(bad)}; available: {', '.join(PAPER_TASKS)}")
    return names


def require_lm_eval() -> None:
    """Raise a one-line error with the install command when lm-eval is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise PTQ161Error(
            "zero-shot evaluation needs lm-evaluation-harness: pip install 'ptq161[eval]' (or pip install lm-eval)"
        ) from None


def _data_dir(data_dir: str | Path | None) -> Path:
    ddir = sources.resolve_data_dir(data_dir)
    if ddir is None:
        raise DataError("zero-shot tasks need a data directory: pass --data-dir or set PTQ161_DATA")
    return Path(ddir)


@contextmanager
def local_task_dir(tasks: list[str], data_dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary directory holding the converted data and the task YAMLs of ``tasks``."""
    ddir = _data_dir(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="ptq161-tasks-"))
    try:
        pkg = resources.files("ptq161.eval") / "tasks"
        (tmp / "ptq161_task_utils.py").write_text((pkg / "ptq161_task_utils.py").read_text())
        for name in tasks:
            task = TASKS[name]
            if not (ddir / task.source).exists():
                raise DataError(f"{name}: {ddir / task.source} not found (data directory {ddir})")
            docs = task.convert(ddir)
            data = tmp / f"{name}.jsonl"
            data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
            yaml = (pkg / f"{name}.yaml").read_text().replace("__DATA_FILE__", json.dumps(str(data)))
            yaml = yaml.replace("__CACHE_DIR__", json.dumps(str(tmp / "hf-cache")))
            (tmp / f"{name}.yaml").write_text(yaml)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def count_documents(name: str, data_dir: str | Path | None = None) -> int:
    """Number of documents lm-eval builds for local task ``name`` (loads it through lm-eval)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    with local_task_dir([name], data_dir) as tdir:
        task = TaskManager(include_path=str(tdir), include_defaults=False).load([name])["tasks"][name]
        return len(task.eval_docs)


@dataclass
class ZeroShotResult:
    """Per-task metrics as lm-eval reports them, with versions, sample counts and settings."""

    tasks: dict[str, dict[str, float]]
    versions: dict[str, Any]
    n_samples: dict[str, int]
    unavailable: dict[str, str]
    seconds: float
    limit: int | None
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def evaluate_zeroshot(
    model: nn.Module,
    tokenizer: Any,
    tasks: list[str],
    *,
    limit: int | None = None,
    batch_size: int = 8,
    data_dir: str | Path | None = None,
    seed: int = 0,
    lm: Any = None,
) -> ZeroShotResult:
    """Run lm-eval's ``simple_evaluate`` 0-shot on the local copies of ``tasks``.

    ``model`` is any causal LM in memory (FP, fake-quant or packed), scored through lm-eval's ``HFLM``;
    ``lm``: another lm-eval model to score instead (e.g. its ``local-completions`` client of a
    ``ptq161 serve`` server; ``model`` is then unused); ``limit`` takes the
    first N documents of each task. Metrics keep lm-eval's names without the filter
    suffix (``acc``, ``acc_norm``, ``perplexity`` and their ``_stderr``).
    """
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    run = [t for t in tasks if t in TASKS]
    unavailable = {t: UNAVAILABLE[t] for t in tasks if t in UNAVAILABLE}
    out: dict[str, dict[str, float]] = {}
    versions: dict[str, Any] = {}
    n_samples: dict[str, int] = {}
    t0 = time.perf_counter()
    if run and tokenizer.eos_token_id is None and tokenizer.bos_token_id is None:
        raise PTQ161Error("lm-eval needs a prefix token to score continuations: the tokenizer has no eos or bos token")
    if run and lm is None:
        from .ranked_lm import RankedHFLM

        device = str(next(model.parameters()).device)
        lm = RankedHFLM(World.current(), pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    if run:
        with local_task_dir(run, data_dir) as tdir:
            tm = TaskManager(include_path=str(tdir), include_defaults=False)
            res = simple_evaluate(
                model=lm,
                tasks=run,
                num_fewshot=0,
                limit=limit,
                task_manager=tm,
                log_samples=False,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                bootstrap_iters=1000,
            )
        if res is None:  # a rank other than 0 under torchrun: lm-eval gathered its metrics to rank 0
            return ZeroShotResult({}, {}, {}, unavailable, time.perf_counter() - t0, limit, batch_size)
        for name in run:
            metrics = res["results"][name]
            out[name] = {k.split(",")[0]: float(v) for k, v in metrics.items() if "," in k and v != "N/A"}
            versions[name] = res["versions"].get(name)
            n_samples[name] = int(res["n-samples"][name]["effective"])
    return ZeroShotResult(out, versions, n_samples, unavailable, time.perf_counter() - t0, limit, batch_size)
