"""Time onnxruntime-genai on one prompt: ``python run_ort.py MODEL_DIR IDS_JSON NEW_TOKENS THREADS RUNS``.

Prefill is the time from handing over the prompt to the first new token (``append_tokens`` runs the
prompt, the first ``generate_next_token`` picks from its logits); decode is the time of the other
``NEW_TOKENS - 1`` tokens, each one forward over the KV cache, as in ptq161's ``measure_speed``.
"""

import json
import sys
import time

import onnxruntime_genai as og
from timing import time_and_report


def main() -> None:
    model_dir, ids_file, new_tokens, threads, runs = sys.argv[1:6]
    new_tokens, threads, runs = int(new_tokens), int(threads), int(runs)
    ids = json.loads(open(ids_file).read())
    config = og.Config(model_dir)
    session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
    model = og.Model(config)

    def once(prompt: list[int], n: int) -> tuple[float, float, list[int], dict]:
        params = og.GeneratorParams(model)
        total = len(prompt) + n
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()
        t1 = time.perf_counter()
        while not gen.is_done():
            gen.generate_next_token()
        t2 = time.perf_counter()
        out = list(gen.get_sequence(0))[len(prompt) :]
        return t1 - t0, t2 - t1, [int(t) for t in out], {}

    time_and_report(once, ids, new_tokens, runs, "onnxruntime-genai", getattr(og, "__version__", "unknown"))


if __name__ == "__main__":
    main()
