"""What both runners share: warm up, time ``runs`` generations, print one JSON line of medians.

``once(prompt, n)`` returns ``(prefill_s, decode_s, tokens, extra)`` for one generation of ``n`` tokens.
Imported by the runners from their own directory (they run in venvs without ptq161).
"""

import json
import statistics
import sys


def time_and_report(once, ids: list[int], new_tokens: int, runs: int, runtime: str, version: str) -> None:
    """Warm up on 8 tokens that are not a prefix of the prompt, time ``runs`` generations, print the JSON line."""
    once(ids[::-1][:8], 4)
    timed = [once(ids, new_tokens) for _ in range(runs)]
    tokens = timed[0][2]
    if len(tokens) != new_tokens:
        sys.exit(f"{runtime} produced {len(tokens)} tokens, not {new_tokens}")
    result = {
        "prefill_tokens_per_s": statistics.median(len(ids) / t[0] for t in timed),
        "decode_tokens_per_s": statistics.median((new_tokens - 1) / t[1] for t in timed),
        "runs": [{"prefill_s": t[0], "decode_s": t[1], **t[3]} for t in timed],
        "tokens": tokens,
        "version": version,
    }
    print(json.dumps(result))
