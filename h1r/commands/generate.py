"""`h1r generate`: completions for prompts given as arguments or in a JSONL file."""

from __future__ import annotations

import json
import sys

from h1r.errors import DataError, H1RError


def add_sampling_args(p, temperature=0.6, top_p=0.95, max_tokens=256):
    g = p.add_argument_group("sampling")
    g.add_argument("--n", type=int, default=1, help="completions per prompt")
    g.add_argument("--temperature", type=float, default=temperature)
    g.add_argument("--top-p", type=float, default=top_p)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--max-tokens", type=int, default=max_tokens)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stop-token", action="append", default=[], help="stop token by its text, e.g. '<|im_end|>'")
    g.add_argument("--stop-token-id", action="append", type=int, default=[])
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--logprobs", type=int, default=None, help="top-k logprobs per generated token (<= 20)")


def add_engine_args(p):
    g = p.add_argument_group("engine")
    g.add_argument("--model", required=True, help="model directory (HF layout, with tokenizer)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--max-num-seqs", type=int, default=64)
    g.add_argument("--ssm-state-dtype", default="float32", choices=["float32", "bfloat16"])


def add_parser(sub):
    p = sub.add_parser("generate", help="generate completions for prompts (arguments or JSONL)")
    p.add_argument("prompts", nargs="*", help="prompts (or use --input)")
    p.add_argument("--input", help="JSONL with 'prompt', 'messages' or 'prompt_token_ids' per line")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template to text prompts")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    p.add_argument("--output", help="write the JSON lines to this file instead of stdout")
    add_engine_args(p)
    add_sampling_args(p)
    p.set_defaults(func=run)


def build_params(args, tokenizer):
    from h1r.engine import SamplingError, SamplingParams

    stop_ids = list(args.stop_token_id)
    for t in args.stop_token:
        i = tokenizer.token_to_id(t)
        if i is None:
            raise SamplingError(f"unknown stop token {t!r}: it is not in the tokenizer's vocabulary")
        stop_ids.append(i)
    return SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          presence_penalty=args.presence_penalty, max_tokens=args.max_tokens, stop=args.stop,
                          stop_token_ids=stop_ids, seed=args.seed, logprobs=args.logprobs)


def build_llm(args):
    from h1r.engine.llm import LLM

    return LLM(args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
               max_num_seqs=args.max_num_seqs, ssm_state_dtype=args.ssm_state_dtype)


def read_prompts(args, tokenizer) -> list[tuple[str, list[int]]]:
    """-> [(display text, token ids)]; chat template on text prompts unless --raw."""
    from h1r.utils.io import iter_jsonl

    rows: list = [{"prompt": p} for p in args.prompts]
    if args.input:
        rows += list(iter_jsonl(args.input))
    if not rows:
        raise H1RError("no prompts: give them as arguments or with --input FILE")
    chat = bool(tokenizer.chat_template) and not args.raw
    out = []
    for i, r in enumerate(rows):
        if "prompt_token_ids" in r:
            out.append((None, [int(t) for t in r["prompt_token_ids"]]))
        elif "messages" in r:
            out.append((None, tokenizer.apply_chat_template(r["messages"], tokenize=True)))
        elif isinstance(r.get("prompt"), str):
            text = r["prompt"]
            ids = (tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True) if chat
                   else tokenizer.encode(text))
            out.append((text, ids))
        else:
            where = f"{args.input}: row {i + 1 - len(args.prompts)}" if args.input else f"prompt {i + 1}"
            raise DataError(f"{where}: needs 'prompt' (string), 'messages' or 'prompt_token_ids'")
    return out


def run(args) -> int:
    llm = build_llm(args)
    params = build_params(args, llm.tokenizer)
    prompts = read_prompts(args, llm.tokenizer)
    outs = llm.generate([ids for _, ids in prompts], params, use_tqdm=len(prompts) > 1)
    sink = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for (text, _), o in zip(prompts, outs):
            if args.json or args.output:
                rec = {"prompt": text, "prompt_token_ids": o.prompt_token_ids, "outputs": [
                    {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason,
                     **({"logprobs": [{str(k): v for k, v in d.items()} for d in c.logprobs.as_dicts(c.token_ids)]}
                        if c.logprobs is not None else {})} for c in o.outputs]}
                sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
            else:
                for c in o.outputs:
                    sink.write(c.text + "\n")
    finally:
        if args.output:
            sink.close()
    return 0
