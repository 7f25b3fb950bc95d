"""Time onnxruntime-genai on one prompt: ``python run_ort.py MODEL_DIR IDS_JSON NEW_TOKENS THREADS RUNS``.

Prefill is the time from handing over the prompt to the first new token (``append_tokens`` runs the
prompt, the first ``generate_next_token`` picks from its logits); decode is the time of the other
``NEW_TOKENS - 1`` tokens, each one forward over the KV cache, as in ptq161's ``measure_speed``.
"""

import json
import statistics
import sys
import time

import onnxruntime_genai as og


def main() -> None:
    model_dir, ids_file, new_tokens, threads, runs = sys.argv[1:6]
    new_tokens, threads, runs = int(new_tokens), int(threads), int(runs)
    ids = json.loads(open(ids_file).read())
    config = og.Config(model_dir)
    session = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
    model = og.Model(config)

    def once(prompt: list[int], n: int) -> tuple[float, float, list[int]]:
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
        return t1 - t0, t2 - t1, [int(t) for t in out]

    once(ids[::-1][:8], 4)  # warm-up (not a prefix of the prompt)
    timed = [once(ids, new_tokens) for _ in range(runs)]
    tokens = timed[0][2]
    if len(tokens) != new_tokens:
        sys.exit(f"onnxruntime-genai produced {len(tokens)} tokens, not {new_tokens}")
    print(
        json.dumps(
            {
                "prefill_tokens_per_s": statistics.median(len(ids) / p for p, _, _ in timed),
                "decode_tokens_per_s": statistics.median((new_tokens - 1) / d for _, d, _ in timed),
                "runs": [{"prefill_s": p, "decode_s": d} for p, d, _ in timed],
                "tokens": tokens,
                "version": og.__version__ if hasattr(og, "__version__") else "unknown",
            }
        )
    )


if __name__ == "__main__":
    main()
