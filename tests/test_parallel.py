"""Sharded evaluation under torchrun (gloo on the CPU): the same window losses, bit for bit, as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ptq161.parallel import World
from tests.helpers import save_model_dir, tiny_llama


def test_shards_cover_every_item_once_and_gather_in_order():
    n = 7
    shards = [World(r, 3).shard(n) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(k for s in shards for k in s) == list(range(n))
    assert World().gather(3, {2: "c", 0: "a", 1: "b"}) == ["a", "b", "c"]


def _one_process_and_two_ranks(args: list[str], tmp_path) -> tuple[dict, dict, str]:
    """``ptq161 ARGS --json`` in one process and under torchrun with 2 ranks, one thread per process in both:
    (one process's JSON, the 2 ranks' JSON, the 2 ranks' stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, "-m", "ptq161", *args, "--json", str(one)], check=True, env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run([*torchrun, "-m", "ptq161", *args, "--json", str(two)], env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(one.read_text()), json.loads(two.read_text()), done.stdout


def test_two_ranks_give_the_perplexity_of_one_process_bit_for_bit(tmp_path):
    model_dir = save_model_dir(tiny_llama(), tmp_path / "m")
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank. " * 6)  # 6 windows of 64, 5 taken
    args = ["ppl", str(model_dir), "--datasets", f"text:{text}", "--seqlen", "64", "--max-windows", "5", "--no-verify"]
    a, b, stdout = _one_process_and_two_ranks(args, tmp_path)
    ra, rb = a["results"][f"text:{text}"], b["results"][f"text:{text}"]
    assert ra["windows"] == rb["windows"] == 5 and b["settings"]["ranks"] == 2
    assert rb["window_nll"] == ra["window_nll"] and rb["ppl"] == ra["ppl"]  # exact: same bits
    assert stdout.count("model:") == 1  # rank 0 alone prints


@pytest.mark.slow
def test_two_ranks_give_the_zero_shot_results_of_one_process(shared_data, tmp_path):
    """lm-eval's own data-parallel mode (documents split by rank, metrics gathered to rank 0) on a model in
    memory: the same accuracies and lambada perplexity as one process."""
    from transformers import AutoTokenizer

    model_dir = save_model_dir(tiny_llama(), tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.eos_token = "!"  # lm-eval scores continuations after the eos token as prefix
    tok.save_pretrained(model_dir)
    args = ["eval", str(model_dir), "--tasks", "piqa,lambada_openai", "--limit", "5", "--batch-size", "1",
            "--data-dir", str(shared_data), "--no-verify"]  # fmt: skip
    a, b, _ = _one_process_and_two_ranks(args, tmp_path)
    assert b["n_samples"] == a["n_samples"] == {"piqa": 5, "lambada_openai": 5} and b["settings"]["ranks"] == 2
    for task in ("piqa", "lambada_openai"):
        assert b["tasks"][task]["acc"] == a["tasks"][task]["acc"]
    assert b["tasks"]["piqa"]["acc_norm"] == a["tasks"]["piqa"]["acc_norm"]
    assert b["tasks"]["lambada_openai"]["perplexity"] == pytest.approx(a["tasks"]["lambada_openai"]["perplexity"],
                                                                       rel=1e-12)  # fmt: skip
