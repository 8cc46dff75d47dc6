"""`h1r solve`: one problem with DeepConf (online early stopping or offline filtering) on the engine.

    h1r solve --model DIR "Compute 21+19." [--mode online|offline] [--variant low|high] [--budget 64]
              [--warmup 16] [--consensus 0.95 | --no-consensus] [--window 2048] [--json]
"""

from __future__ import annotations

from h1r.commands.generate import add_engine_args, add_sampling_args
from h1r.errors import ConfigError


def add_parser(sub):
    p = sub.add_parser("solve", help="solve one problem with DeepConf voting")
    p.add_argument("problem", help="the problem text (sent as a user turn through the chat template)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g = p.add_argument_group("deepconf")
    g.add_argument("--mode", default="online", choices=["online", "offline"],
                   help="online: warm-up, threshold, early stopping (Alg. 2); offline: budget traces, filter, vote")
    g.add_argument("--variant", default="low", choices=["low", "high"],
                   help="low: keep the top 10%% (aggressive); high: keep the top 90%% (safe)")
    g.add_argument("--budget", type=int, default=64, help="total traces, warm-up included")
    g.add_argument("--warmup", type=int, default=16, help="warm-up traces (online)")
    g.add_argument("--consensus", type=float, default=0.95, help="stop when the leader's weighted share reaches τ")
    g.add_argument("--no-consensus", action="store_true", help="budget-only: always generate --budget traces")
    g.add_argument("--step", type=int, default=8, help="final traces per batch between consensus checks")
    g.add_argument("--window", type=int, default=2048, help="group-confidence window in tokens")
    g.add_argument("--tail", type=int, default=2048, help="tokens of the tail confidence")
    g.add_argument("--topk", type=int, default=20, help="top-k logprobs per token confidence")
    g.add_argument("--vote", default="min_window_weighted", help="vote method that picks the answer")
    p.add_argument("--json", action="store_true", help="print the whole DeepConfResult as JSON")
    p.add_argument("--text", action="store_true", help="with --json: include each trace's text")
    add_engine_args(p)
    add_sampling_args(p, max_tokens=None)  # None: up to the context length
    p.set_defaults(func=run)


def build_config(args):
    from h1r.deepconf.run import DeepConfConfig

    if args.no_consensus:
        consensus = None
    else:
        consensus = args.consensus
    return DeepConfConfig(mode=args.mode, variant=args.variant, budget=args.budget, warmup_traces=args.warmup,
                          consensus=consensus, step=args.step, window=args.window, tail=args.tail, topk=args.topk,
                          vote_method=args.vote)


def format_result(r) -> str:
    """The answer, the vote table, token counts per stage and the threshold, for people."""
    lines = [f"answer: {r.answer}  ({r.method}, share {r.share:.3f})"]
    thr = "none" if r.threshold is None else f"{r.threshold:.4f}"
    lines.append(f"threshold s: {thr}   ended by: {r.ended_by}")
    n = {s: sum(t.stage == s for t in r.traces) for s in ("warmup", "final")}
    stopped = sum(t.finish_reason == "confidence" for t in r.traces)
    voters = sum(t.voted for t in r.traces)
    lines.append(f"traces: {n['warmup']} warm-up + {n['final']} final, {stopped} stopped early, {voters} voted")
    lines.append(f"tokens: warm-up {r.tokens.get('warmup', 0)}, final {r.tokens.get('final', 0)}, "
                 f"total {r.tokens.get('total', 0)}")
    lines.append("votes:")
    width = max(len(m) for m in r.votes)
    for m, v in r.votes.items():
        lines.append(f"  {m:<{width}}  {str(v.answer):<12} share {v.share:.3f}  voters {v.voters}")
    chosen = r.votes.get(r.method)
    if chosen is not None and chosen.tallies:
        lines.append(f"tally ({r.method}):")
        for ans, w in list(chosen.tallies.items())[:10]:
            lines.append(f"  {ans:<20} weight {w:10.3f}  votes {chosen.counts.get(ans, 0)}")
    return "\n".join(lines)


def run(args) -> int:
    from h1r.commands.generate import build_llm, build_params
    from h1r.deepconf.engine import solve

    if not args.problem.strip():
        raise ConfigError("the problem text is empty")
    if args.n != 1:
        raise ConfigError("--n does not apply to solve: use --budget (and --warmup)")
    if args.logprobs is not None:
        raise ConfigError("--logprobs does not apply to solve: DeepConf uses --topk logprobs per token")
    cfg = build_config(args)
    llm = build_llm(args)
    sampling = build_params(args, llm.tokenizer)
    prompt = args.problem if args.raw or not llm.tokenizer.chat_template else [
        {"role": "user", "content": args.problem}]
    result = solve(llm, prompt, cfg, sampling, seed=args.seed)
    if args.json:
        print(result.to_json(text=args.text))
    else:
        print(format_result(result))
    return 0
