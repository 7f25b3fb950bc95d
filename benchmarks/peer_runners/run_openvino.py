"""Time OpenVINO GenAI on one prompt: ``python run_openvino.py MODEL_DIR IDS_JSON NEW_TOKENS THREADS RUNS``.

The prompt goes in as token ids; a streamer stamps the time of every new token, so prefill is the
time to the first new token and decode the time of the other ``NEW_TOKENS - 1``, as in ptq161's
``measure_speed`` (the pipeline's own perf metrics are recorded beside).
"""

import json
import sys
import time

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
from timing import time_and_report


class Stamps(ov_genai.StreamerBase):
    """Records when each token arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, token):  # one token id, or a list of them
        self.times.extend([time.perf_counter()] * (len(token) if isinstance(token, list) else 1))
        return ov_genai.StreamingStatus.RUNNING

    def end(self) -> None:
        pass


def main() -> None:
    model_dir, ids_file, new_tokens, threads, runs = sys.argv[1:6]
    new_tokens, threads, runs = int(new_tokens), int(threads), int(runs)
    ids = json.loads(open(ids_file).read())
    # prefix caching off: with it, every run after the first finds the prompt's KV cache and its
    # "prefill" is a cache hit (measured: 483 ms, then 28 ms for the same 128 tokens)
    sched = ov_genai.SchedulerConfig()
    sched.enable_prefix_caching = False
    pipe = ov_genai.LLMPipeline(model_dir, "CPU", scheduler_config=sched, INFERENCE_NUM_THREADS=threads)

    def once(prompt: list[int], n: int) -> tuple[float, float, list[int], dict]:
        cfg = ov_genai.GenerationConfig()
        cfg.max_new_tokens = n
        cfg.min_new_tokens = n
        cfg.ignore_eos = True
        cfg.do_sample = False
        x = np.array([prompt], dtype=np.int64)
        inputs = ov_genai.TokenizedInputs(ov.Tensor(x), ov.Tensor(np.ones_like(x)))
        stamps = Stamps()
        t0 = time.perf_counter()
        res = pipe.generate(inputs, cfg, stamps)
        pm = res.perf_metrics
        own = {"ttft_ms": pm.get_ttft().mean, "tpot_ms": pm.get_tpot().mean}
        first, last = stamps.times[0], stamps.times[-1]
        return first - t0, last - first, [int(t) for t in res.tokens[0]], own

    time_and_report(once, ids, new_tokens, runs, "OpenVINO GenAI", ov_genai.__version__)


if __name__ == "__main__":
    main()
