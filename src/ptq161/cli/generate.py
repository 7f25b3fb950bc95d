"""``ptq161 generate``: continue a prompt (or answer it as a chat turn), printing tokens as they come."""

from __future__ import annotations

import argparse
import sys
import time

from ..api import load
from ..errors import PTQ161Error
from ..runtime.generate import Generation, context_length, decode_path, pick_engine
from ..runtime.sampling import Sampling
from .common import add_device, add_load_options, load_options, positive_int


def add_engine_option(p: argparse._ActionsContainer) -> None:
    """``--engine`` (shared with ``bench``, ``chat`` and ``serve``)."""
    p.add_argument(
        "--engine",
        choices=["auto", "on", "off"],
        default="auto",
        help="decode packed LLaMA-layout models with the fused numba engine (auto: when it applies; "
        "off: the model's own forward every step)",
    )


def non_negative_float(text: str) -> float:
    """argparse type: a float >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """``--temperature --top-k --top-p --seed --stop`` (shared with ``chat``)."""
    g = p.add_argument_group("sampling (default: greedy)")
    g.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 is greedy (default: 0)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="sample among the most likely tokens of this mass")
    g.add_argument("--seed", type=int, default=None, help="seed of the sampling (repeatable output)")
    g.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")


def sampling_of(args: argparse.Namespace) -> Sampling:
    """The ``Sampling`` the flags ask for."""
    return Sampling(args.temperature, args.top_k, args.top_p, args.seed)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("generate", help="text generation with a model or a quantized directory, streamed")
    p.add_argument("model", help="a ptq161 output directory, smollm2-135m, a local model directory or a hub id")
    p.add_argument("--prompt", required=True, help="text to continue (with --chat: the user's message)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default: 32)")
    p.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template (instruct models)")
    add_sampling_options(p)
    add_engine_option(p)
    add_device(p)
    add_load_options(p)
    p.set_defaults(func=run)


def chat_ids(tokenizer, messages: list[dict[str, str]]):
    """The token ids [1, T] of ``messages`` through the tokenizer's chat template, ready for the reply."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise PTQ161Error("this model's tokenizer has no chat template: drop --chat")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    return ids if not hasattr(ids, "keys") else ids["input_ids"]


def stream_to(out, gen: Generation) -> float:
    """Print ``gen``'s text to ``out`` as it is made; -> seconds taken."""
    t0 = time.perf_counter()
    for delta in gen:
        out.write(delta)
        out.flush()
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    """Print the prompt and its continuation as it is generated (how it decoded, on stderr)."""
    sampling = sampling_of(args)
    model, tok = load(args.model, device=args.device, **load_options(args))
    if args.chat:
        ids = chat_ids(tok, [{"role": "user", "content": args.prompt}])
    else:
        ids = tok(args.prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise PTQ161Error("the prompt is empty")
    total = ids.shape[1] + args.max_new_tokens
    if total > context_length(model):
        raise PTQ161Error(
            f"prompt of {ids.shape[1]} tokens + --max-new-tokens {args.max_new_tokens} = {total} exceeds the "
            f"model's context of {context_length(model)} tokens"
        )
    engine = pick_engine(model, args.engine, total)
    gen = Generation(model, tok, ids.to(args.device), args.max_new_tokens, sampling, tuple(args.stop), engine)
    if not args.chat:
        sys.stdout.write(args.prompt)
    seconds = stream_to(sys.stdout, gen)
    print()
    print(
        f"[{len(gen.tokens)} tokens in {seconds:.2f} s (prompt and first call included), finished by "
        f"{gen.finish_reason}; decoded through {decode_path(model, args.engine, total)}]",
        file=sys.stderr,
    )
    return 0
