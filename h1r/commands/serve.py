"""`h1r serve`: the OpenAI-compatible server (see h1r/serve)."""

from __future__ import annotations

import os
from pathlib import Path

from h1r.errors import ConfigError


def add_parser(sub):
    from h1r.commands.generate import add_engine_args

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $H1R_API_KEY, else no key)")
    p.add_argument("--served-model-name", default=None, help="the model id clients use (default: the model "
                                                              "directory's name)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get a 413")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get after SIGTERM before they are aborted")
    p.add_argument("--reasoning-parser", default="deepseek_r1", choices=["deepseek_r1", "none"],
                   help="split <think>...</think> into reasoning_content (deepseek_r1) or not (none)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from h1r.commands.generate import build_llm
    from h1r.serve.app import ServeConfig, build_app
    from h1r.serve.server import run_server

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes must be at least 1024, got {args.max_body_bytes}")
    if args.shutdown_grace < 0:
        raise ConfigError(f"--shutdown-grace must be >= 0, got {args.shutdown_grace}")
    if not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model}: no such directory")
    api_key = args.api_key if args.api_key is not None else os.environ.get("H1R_API_KEY") or None
    cfg = ServeConfig(served_model_name=args.served_model_name or Path(args.model).resolve().name, api_key=api_key,
                      max_body_bytes=args.max_body_bytes, shutdown_grace=args.shutdown_grace,
                      reasoning_parser=args.reasoning_parser)
    llm = build_llm(args)
    app = build_app(llm, cfg)
    return run_server(app, args.host, args.port, args.log_level)
