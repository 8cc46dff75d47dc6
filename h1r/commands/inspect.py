"""`h1r inspect DIR`: what a checkpoint is and what it costs to run (for sizing batches)."""

from __future__ import annotations

import json
from pathlib import Path

from h1r.errors import CheckpointError


def add_parser(sub):
    p = sub.add_parser("inspect", help="summarise a checkpoint: config, parameters, memory per sequence")
    p.add_argument("model", help="model directory (HF layout) or a preset name like falcon-h1-7b")
    p.add_argument("--context", type=int, default=4096, help="context length for the per-sequence estimate")
    p.add_argument("--batch", type=int, default=64, help="batch size for the total estimate")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return str(n)


def summarize(model: str, context: int = 4096, batch: int = 64) -> dict:
    from h1r.checkpoint import checkpoint_index
    from h1r.config import PRESETS, ModelConfig, preset

    path = Path(model)
    if path.is_dir():
        cfg = ModelConfig.from_json_file(path / "config.json") if (path / "config.json").is_file() else None
        if cfg is None:
            raise CheckpointError(f"{path}: no config.json")
        entries = checkpoint_index(path)
        stored = sum(e.end - e.start for e in entries.values())
        files = sorted({e.file.name for e in entries.values()})
    elif model in PRESETS:
        cfg, stored, files = preset(model), None, []
    else:
        raise CheckpointError(f"{model}: not a directory and not a preset ({', '.join(PRESETS)})")
    wbytes = 2 if cfg.torch_dtype in ("bfloat16", "float16") else 4
    kv_tok = cfg.kv_bytes_per_token(wbytes)
    conv = cfg.conv_state_bytes(wbytes)
    ssm32, ssm16 = cfg.ssm_state_bytes(4), cfg.ssm_state_bytes(2)
    per_seq32 = conv + ssm32 + kv_tok * context
    per_seq16 = conv + ssm16 + kv_tok * context
    return {
        "model": str(model),
        "model_type": "falcon_h1",
        "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size, "attention_heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.attn_head_dim, "mamba_heads": cfg.mamba_n_heads, "mamba_head_dim": cfg.ssm_head_dim,
        "d_state": cfg.mamba_d_state, "n_groups": cfg.mamba_n_groups, "d_conv": cfg.mamba_d_conv,
        "chunk_size": cfg.mamba_chunk_size, "mamba_rms_norm": cfg.mamba_rms_norm,
        "tie_word_embeddings": cfg.tie_word_embeddings, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings, "dtype": cfg.torch_dtype,
        "parameters": cfg.num_parameters(), "stored_bytes": stored, "files": files,
        "kv_bytes_per_token": kv_tok, "conv_state_bytes": conv,
        "ssm_state_bytes_fp32": ssm32, "ssm_state_bytes_bf16": ssm16,
        "context": context, "batch": batch,
        "bytes_per_sequence_fp32_state": per_seq32, "bytes_per_sequence_bf16_state": per_seq16,
        "weights_bytes": cfg.num_parameters() * wbytes,
    }


def run(args) -> int:
    s = summarize(args.model, args.context, args.batch)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    rows = [
        ("layers x hidden", f"{s['layers']} x {s['hidden_size']} (MLP {s['intermediate_size']}, vocab {s['vocab_size']})"),
        ("attention", f"{s['attention_heads']} q / {s['kv_heads']} kv heads x {s['head_dim']}, rope theta {s['rope_theta']:g}"),
        ("mamba-2", f"{s['mamba_heads']} heads x {s['mamba_head_dim']}, d_state {s['d_state']}, groups {s['n_groups']}, "
                    f"conv {s['d_conv']}, chunk {s['chunk_size']}, gated norm {s['mamba_rms_norm']}"),
        ("parameters", f"{s['parameters'] / 1e6:,.2f} M ({_fmt_bytes(s['weights_bytes'])} in {s['dtype']})"),
        ("stored", _fmt_bytes(s["stored_bytes"]) + f" in {len(s['files'])} file(s)" if s["stored_bytes"] else "(preset)"),
        ("KV cache per token", _fmt_bytes(s["kv_bytes_per_token"])),
        ("conv state per sequence", _fmt_bytes(s["conv_state_bytes"])),
        ("SSM state per sequence", f"{_fmt_bytes(s['ssm_state_bytes_fp32'])} fp32 / {_fmt_bytes(s['ssm_state_bytes_bf16'])} bf16"),
        (f"one sequence at {s['context']} tokens", f"{_fmt_bytes(s['bytes_per_sequence_fp32_state'])} (fp32 state) / "
                                                  f"{_fmt_bytes(s['bytes_per_sequence_bf16_state'])} (bf16 state)"),
        (f"{s['batch']} such sequences", f"{_fmt_bytes(s['batch'] * s['bytes_per_sequence_fp32_state'])} / "
                                        f"{_fmt_bytes(s['batch'] * s['bytes_per_sequence_bf16_state'])} + weights"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{s['model']}  (falcon_h1)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0
