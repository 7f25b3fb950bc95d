"""Stand-alone timing scripts run by ``benchmarks.peers`` inside each peer runtime's own venv.

They import only that runtime (never ptq161), read the prompt's token ids from a JSON file and
print one JSON line: medians over the runs of prefill and decode tokens/s, and the greedy tokens.
"""
