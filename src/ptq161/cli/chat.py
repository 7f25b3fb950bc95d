"""``ptq161 chat``: an interactive chat in the terminal, on the same generation code as ``serve``."""

from __future__ import annotations

import argparse
import sys

from ..api import load
from ..errors import PTQ161Error
from ..runtime.generate import Generation, context_length, decode_path, pick_engine
from .common import add_device, add_load_options, load_options, positive_int
from .generate import add_engine_option, add_sampling_options, chat_ids, sampling_of, stream_to


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("chat", help="chat with an instruct model in the terminal (its chat template applied)")
    p.add_argument("model", help="a ptq161 output directory, smollm2-135m, a local model directory or a hub id")
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="tokens per reply (default: 256)")
    add_sampling_options(p)
    add_engine_option(p)
    add_device(p)
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read a message per line from stdin, print each reply as it is made; an empty line or EOF ends."""
    sampling = sampling_of(args)
    model, tok = load(args.model, device=args.device, **load_options(args))
    ctx = context_length(model)
    engine = pick_engine(model, args.engine, ctx)
    print(f"[chat with {args.model} through {decode_path(model, args.engine, ctx)}; empty line ends]", file=sys.stderr)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = chat_ids(tok, messages)
        room = min(args.max_new_tokens, ctx - ids.shape[1])
        if room < 1:
            raise PTQ161Error(f"the conversation fills the model's context of {ctx} tokens")
        gen = Generation(model, tok, ids.to(args.device), room, sampling, tuple(args.stop), engine)
        stream_to(sys.stdout, gen)
        print()
        messages.append({"role": "assistant", "content": gen.text})
