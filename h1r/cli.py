"""The `h1r` command. Each sub-command lives in its own module exposing `add_parser(sub)`; only the
module of the command being run is imported, so `h1r --help` stays fast and one broken command
cannot take the others down."""

from __future__ import annotations

import argparse
import importlib
import sys

from h1r import __version__
from h1r.errors import H1RError

# sub-command name -> module that defines add_parser(subparsers) and sets func on its parser
COMMANDS: dict[str, str] = {
    "inspect": "h1r.commands.inspect",
    "init": "h1r.commands.init",
    "generate": "h1r.commands.generate",
    "chat": "h1r.commands.chat",
    "sft": "h1r.commands.sft",
    "data": "h1r.commands.data",
    "eval": "h1r.commands.eval",
    "demo": "h1r.commands.demo",
    "grpo": "h1r.commands.grpo",
    "serve": "h1r.commands.serve",
    "solve": "h1r.commands.solve",
}


# one-line help shown by `h1r --help` without importing the command modules
HELP: dict[str, str] = {
    "demo": "run the whole recipe on the embedded default (data -> SFT -> GRPO -> DeepConf eval)",
    "generate": "generate completions for prompts (JSONL or arguments)",
    "chat": "chat with a model in the terminal",
    "solve": "solve one problem with DeepConf voting",
    "eval": "evaluate a model on benchmarks",
    "sft": "supervised fine-tuning with difficulty-aware weighting",
    "grpo": "GRPO reinforcement learning with verifiable rewards",
    "data": "synthesise the curriculum, train a tokenizer, estimate pass rates",
    "serve": "OpenAI-compatible HTTP server",
    "inspect": "summarise a checkpoint: config, parameters, memory per sequence",
    "init": "write a random checkpoint of a preset shape",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="h1r",
        description="H1R: the Falcon-H1R system (hybrid model, engine, SFT -> GRPO -> DeepConf, eval, serve).",
    )
    parser.add_argument("--version", action="version", version=f"h1r {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=HELP.get(name, ""), add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "accepts_overrides", False):
        args.overrides = extra
    try:
        rc = args.func(args)
    except H1RError as e:
        print(f"h1r {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"h1r {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
