"""llama.cpp through llama-cpp-python, two commands:

``python run_llamacpp.py quantize IN_F32_GGUF OUT_GGUF`` writes a Q4_0 file with llama.cpp's own
quantizer (``llama_model_quantize``, its default settings, the same as ``llama-quantize IN OUT Q4_0``);
``python run_llamacpp.py MODEL_GGUF IDS_JSON NEW_TOKENS THREADS RUNS`` times one prompt as the other
runners do: prefill is the time from handing over the prompt (one ``llama_decode`` of the whole
prompt) to the first greedy token (argmax of the last logits); decode is the time of the other
``NEW_TOKENS - 1`` tokens, each one ``llama_decode`` of one token over the KV cache plus its argmax.
"""

import ctypes
import json
import sys
import time

import llama_cpp
import numpy as np
from timing import time_and_report


def quantize(src: str, dst: str) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize returned {rc}")


def main() -> None:
    if sys.argv[1] == "quantize":
        quantize(sys.argv[2], sys.argv[3])
        return
    model_path, ids_file, new_tokens, threads, runs = sys.argv[1:6]
    new_tokens, threads, runs = int(new_tokens), int(threads), int(runs)
    ids = json.loads(open(ids_file).read())
    llm = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=len(ids) + new_tokens + 8,
        n_batch=512,
        n_ubatch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        return int(np.argmax(logits))

    def once(prompt: list[int], n: int) -> tuple[float, float, list[int], dict]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        out = [greedy()]
        t1 = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(greedy())
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out, {}

    time_and_report(once, ids, new_tokens, runs, "llama.cpp (llama-cpp-python)", llama_cpp.__version__)


if __name__ == "__main__":
    main()
