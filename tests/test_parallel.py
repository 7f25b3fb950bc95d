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


def _quantize_args(model_dir, text, out, steps: int, batch: int) -> list[str]:
    return [
        "quantize", str(model_dir), "--recipe", "smoke", "--calib-dataset", f"text:{text}", "--calib-nsamples", "6",
        "--calib-seqlen", "64", "--e2e-steps", str(steps), "--e2e-batch", str(batch), "--e2e-lr", "5e-2",
        "--e2e-topk", "16", "--e2e-windows", "10", "--head", "fp32", "--output", str(out),
        "--no-verify",
    ]  # fmt: skip


def _torchrun(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "ptq161"]
    return subprocess.Popen([*cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def e2e_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    text = root / "t.txt"
    from tests.helpers import SAMPLE_TEXT

    text.write_text(SAMPLE_TEXT)
    return save_model_dir(tiny_llama(), root / "m"), text


def test_two_ranks_train_the_end_to_end_stage_as_one_process_with_their_windows(e2e_model, tmp_path):
    """2 ranks x 1 window a step against 1 process x 2 windows a step (the same windows in the same order,
    one thread each): the same KL curve and parts within float tolerance (the gradients' sum is exact for two
    ranks, so in practice bit for bit); rank 0 alone runs the block stage and writes."""
    from ptq161.pipeline.output_dir import read_meta, read_parts
    from tests.helpers import assert_parts_close

    model_dir, text = e2e_model
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "ptq161", *_quantize_args(model_dir, text, one, 8, 2)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    proc = _torchrun(["--verbose", *_quantize_args(model_dir, text, two, 8, 1)])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    assert stdout.count("saved ") == 1  # rank 0 alone prints
    assert "rank 1 of 2: waiting for rank 0's block stage" in stderr  # the block stage ran once, on rank 0
    a, b = read_meta(one), read_meta(two)
    la, lb = a["e2e_log"], b["e2e_log"]
    assert lb["ranks"] == 2 and la["ranks"] == 1 and la["windows_per_step"] == lb["windows_per_step"] == 2
    assert lb["kl_first"] == pytest.approx(la["kl_first"], rel=1e-5)
    assert lb["train_kl_after"] == pytest.approx(la["train_kl_after"], rel=1e-4)
    assert la["train_kl_after"] < 0.9 * la["train_kl_before"]
    assert_parts_close(read_parts(two), read_parts(one), rel=1e-4)


def _ranks(args: list[str]) -> list[subprocess.Popen]:
    """The 2 ranks of a job started as ``torchrun`` starts them on each machine (the process group's
    environment), without the launcher that would stop the survivors itself."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port)}  # fmt: skip
    return [
        subprocess.Popen(
            [sys.executable, "-m", "ptq161", *args],
            env={**common, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_in_one_line_without_an_artifact_and_resume_finishes_it(e2e_model, tmp_path):
    """Rank 0 killed once the stage has saved a step: the other rank exits 2 with a one-line error (no
    traceback), the output holds only the resume state; `--resume` on 2 ranks under torchrun finishes it with
    the parts of an uninterrupted 2-rank run."""
    import time

    from ptq161.pipeline.output_dir import read_meta, read_parts
    from tests.helpers import assert_parts_close

    model_dir, text = e2e_model
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    steps = 400
    done = _torchrun(_quantize_args(model_dir, text, whole, steps, 1))
    assert done.wait(timeout=900) == 0, done.stderr.read()[-2000:]
    rank0, rank1 = _ranks(_quantize_args(model_dir, text, cut, steps, 1))
    progress = cut / ".ptq161-state" / "e2e" / "progress.json"
    deadline = time.time() + 600
    while time.time() < deadline and rank0.poll() is None:
        if progress.is_file() and 25 <= json.loads(progress.read_text())["progress"].get("step", 0) < steps - 100:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the end-to-end stage never saved a step")
    rank0.kill()
    rank0.communicate()
    _, stderr = rank1.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert rank1.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "rank 1 of 2: another rank stopped answering" in lines[-1] and "--resume" in lines[-1]
    assert read_meta(cut) is None and {p.name for p in cut.iterdir()} <= {".ptq161-state", ".ptq161-lock"}
    resumed = _torchrun([*_quantize_args(model_dir, text, cut, steps, 1), "--resume"])
    _, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stderr[-2000:]
    assert read_meta(cut)["e2e_log"]["ranks"] == 2
    assert_parts_close(read_parts(cut), read_parts(whole), rel=1e-4)


def test_a_rank_waiting_for_the_block_stage_fails_in_one_line_when_rank_0_dies(e2e_model, tmp_path):
    """The other ranks wait for rank 0's block stage for as long as it takes (hours at 1.5B, beyond the
    collectives' 30-minute timeout), but rank 0 killed during it ends their wait at once: exit 2, one line."""
    import time

    model_dir, text = e2e_model
    out = tmp_path / "cut"
    rank0, rank1 = _ranks([*_quantize_args(model_dir, text, out, 8, 1), "--epochs", "400"])
    targets = out / ".ptq161-state" / "e2e-targets" / "progress.json"
    deadline = time.time() + 300
    while time.time() < deadline and rank0.poll() is None:  # the targets are done: the block stage is next
        if targets.is_file() and json.loads(targets.read_text())["progress"].get("windows") == 10:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the teacher targets were never saved")
    time.sleep(1.0)
    assert rank0.poll() is None, "the block stage ended before rank 0 could be killed"
    rank0.kill()
    rank0.communicate()
    t0 = time.time()
    _, stderr = rank1.communicate(timeout=120)
    assert rank1.returncode == 2 and "Traceback" not in stderr, stderr[-2000:]
    assert "rank 1 of 2: another rank stopped answering" in stderr.strip().splitlines()[-1]
    assert time.time() - t0 < 60
