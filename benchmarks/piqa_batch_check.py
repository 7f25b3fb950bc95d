"""Diagnostic: FP PIQA (all 1838 items) through lm-eval at a given batch size, per-item log-likelihoods to /tmp.

Usage: python benchmarks/piqa_batch_check.py BATCH_SIZE all|N
"""

import json
import sys

from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from ptq161 import load_model
from ptq161.eval.zeroshot import local_task_dir

bs = int(sys.argv[1])
limit = None if sys.argv[2] == "all" else int(sys.argv[2])
model, tok = load_model("smollm2-135m")
lm = HFLM(pretrained=model, tokenizer=tok, batch_size=bs, device="cpu")
with local_task_dir(["piqa"], None) as tdir:
    tm = TaskManager(include_path=str(tdir), include_defaults=False)
    res = simple_evaluate(
        model=lm, tasks=["piqa"], num_fewshot=0, limit=limit, task_manager=tm, log_samples=True, bootstrap_iters=0
    )
print(res["results"]["piqa"])
rows = [
    {
        "doc": s["doc_id"],
        "ll": [r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"]],
        "acc": s["acc"],
        "acc_norm": s["acc_norm"],
    }
    for s in res["samples"]["piqa"]
]
json.dump(rows, open(f"/tmp/piqa_bs{bs}.json", "w"))
