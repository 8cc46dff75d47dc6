"""Hugging Face checkpoints: `config.json` + `model.safetensors` (or shards + `model.safetensors.index.json`).

Loading validates everything first (config, every shard header, names, shapes, file sizes) and only
then allocates the model and reads each tensor straight into its parameter (`readinto`), so there is
never a second full copy in memory and a bad checkpoint never yields a half-loaded model.
Writing uses the safetensors library, one shard at a time, each file written atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from h1r.config import ModelConfig
from h1r.errors import CheckpointError, ConfigError
from h1r.model.falcon_h1 import FalconH1ForCausalLM, mup_vector
from h1r.utils.io import atomic_write_json, atomic_write_text

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# tensors some exporters write that carry no learned state
_IGNORED = re.compile(r".*(rotary_emb\.inv_freq|mup_vector)$")


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) in _DTYPE_NAMES:
        return _DTYPE_NAMES[str(dtype)]
    raise ConfigError(f"unsupported dtype {dtype!r} (use float32, float16 or bfloat16)")


@dataclass
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate one .safetensors header without reading tensor data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated (no safetensors header)")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 * 1024 * 1024):
                raise CheckpointError(f"{path}: corrupt safetensors header (header length {n} exceeds file size)")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if isinstance(e, OSError) and not path.exists():
            raise CheckpointError(f"{path}: file not found") from None
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header")
    header.pop("__metadata__", None)
    out = {}
    base = 8 + n
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}' has a malformed header entry") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: tensor '{name}' data size does not match its shape {list(shape)}")
        if base + end > size:
            raise CheckpointError(f"{path}: truncated file: tensor '{name}' ends at byte {base + end} "
                                  f"but the file has {size} bytes")
        out[name] = TensorEntry(path, dtype, shape, base + begin, base + end)
    return out


def checkpoint_index(path: Path) -> dict[str, TensorEntry]:
    """name -> TensorEntry over a single-file or sharded checkpoint directory."""
    index_file = path / INDEX_NAME
    if index_file.is_file():
        try:
            index = json.loads(index_file.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError):
            raise CheckpointError(f"{index_file}: malformed index (needs a 'weight_map' object)") from None
        entries: dict[str, TensorEntry] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path / shard
            if not shard_path.is_file():
                raise CheckpointError(f"{index_file}: shard {shard} is listed but missing")
            for name, e in read_safetensors_header(shard_path).items():
                if name in entries:
                    raise CheckpointError(f"{shard_path}: tensor '{name}' also appears in {entries[name].file.name}")
                entries[name] = e
        for name, shard in weight_map.items():
            if name not in entries or entries[name].file.name != shard:
                raise CheckpointError(f"{index_file}: tensor '{name}' is mapped to {shard} but is not in that file")
        return entries
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no model.safetensors or {INDEX_NAME} found")
    if len(files) > 1:
        raise CheckpointError(f"{path}: several .safetensors files but no {INDEX_NAME}")
    return read_safetensors_header(files[0])


def _check_names_and_shapes(model: torch.nn.Module, entries: dict[str, TensorEntry], cfg: ModelConfig) -> dict:
    expected = {n: tuple(p.shape) for n, p in model.state_dict(keep_vars=True).items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    present = {n: e for n, e in entries.items() if not _IGNORED.match(n)}
    if cfg.tie_word_embeddings:
        present.pop("lm_head.weight", None)  # tied: a stored copy is ignored
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"missing tensor '{missing[0]}'{more}: the checkpoint does not match its config.json")
    if unexpected:
        e = present[unexpected[0]]
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{e.file}: unexpected tensor '{unexpected[0]}'{more} (not part of this model)")
    for name, shape in expected.items():
        e = present[name]
        if e.shape != shape:
            raise CheckpointError(f"{e.file}: tensor '{name}' has shape {list(e.shape)}, "
                                  f"config.json implies {list(shape)}")
        if not (e.dtype.is_floating_point):
            raise CheckpointError(f"{e.file}: tensor '{name}' has non-float dtype {e.dtype}")
    return present


def _read_into(dst: torch.Tensor, e: TensorEntry, fh) -> None:
    """Read one tensor from an open file straight into `dst` (converting dtype/device if needed)."""
    fh.seek(e.start)
    if dst.device.type == "cpu" and dst.dtype == e.dtype and dst.is_contiguous():
        view = memoryview(dst.view(torch.uint8).numpy()) if dst.numel() else memoryview(b"")
        n = fh.readinto(view)
        if n != e.end - e.start:
            raise CheckpointError(f"{e.file}: short read")
        return
    buf = torch.empty(e.shape, dtype=e.dtype)
    if buf.numel():
        n = fh.readinto(memoryview(buf.view(torch.uint8).numpy()))
        if n != e.end - e.start:
            raise CheckpointError(f"{e.file}: short read")
    dst.copy_(buf)


def init_buffers(model: FalconH1ForCausalLM) -> None:
    """Recompute non-persistent buffers (they are not in checkpoints and are garbage after to_empty)."""
    mv = mup_vector(model.config)
    for layer in model.model.layers:
        layer.mamba.mup_vector = mv.to(device=layer.mamba.in_proj.weight.device)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None) -> FalconH1ForCausalLM:
    """Load a Falcon-H1 checkpoint directory (HF layout). dtype None -> config.json's torch_dtype."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json")
    try:
        cfg = ModelConfig.from_json_file(cfg_file)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    dtype = resolve_dtype(dtype) or _DTYPE_NAMES.get(str(cfg.torch_dtype), torch.float32)
    entries = checkpoint_index(path)
    with torch.device("meta"):
        model = FalconH1ForCausalLM(cfg)
    present = _check_names_and_shapes(model, entries, cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    params = model.state_dict(keep_vars=True)
    by_file: dict[Path, list[str]] = {}
    for name in params:
        if name in present:
            by_file.setdefault(present[name].file, []).append(name)
    for file, names in by_file.items():
        with open(file, "rb", buffering=0) as fh:
            for name in sorted(names, key=lambda n: present[n].start):
                with torch.no_grad():
                    _read_into(params[name].data, present[name], fh)
    init_buffers(model)
    model.eval()
    return model


def init_model(cfg: ModelConfig, seed: int = 0, device="cpu", dtype=torch.float32) -> FalconH1ForCausalLM:
    """A randomly initialised model (Mamba-2 style dt/A init, normal(0, initializer_range) matrices),
    built directly on `device` in `dtype` (no full-size CPU copy for a 7B on a GPU)."""
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = FalconH1ForCausalLM(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    init_buffers(model)
    std = cfg.initializer_range
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif name.endswith("A_log"):
                p.copy_(torch.log(torch.empty(p.shape, device=device).uniform_(1.0, 16.0, generator=g)))
            elif name.endswith("dt_bias"):
                lo, hi = 1e-3, 1e-1
                dt = torch.exp(torch.empty(p.shape, device=device).uniform_(math.log(lo), math.log(hi), generator=g))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            elif name.endswith(".D"):
                p.fill_(1.0)
            elif "conv1d.weight" in name:
                bound = 1.0 / math.sqrt(cfg.mamba_d_conv)
                p.uniform_(-bound, bound, generator=g)
            else:
                p.normal_(0.0, std, generator=g)
    return model


def _parse_size(s) -> int:
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", str(s).upper())
    if not m:
        raise ConfigError(f"bad size {s!r} (e.g. '5GB', '500MB')")
    return int(float(m.group(1)) * {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9}[m.group(2)])


def save_model(model: FalconH1ForCausalLM, path: str | os.PathLike, max_shard_size="5GB", tokenizer=None,
               dtype=None) -> Path:
    """Write `model` in the HF layout transformers and vLLM read (sharded above `max_shard_size`)."""
    from safetensors.torch import save_file

    if getattr(model, "multipliers_folded", False):
        raise CheckpointError("this model has its µP multipliers folded into the weights (inference mode); "
                              "save the unfolded model instead")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    dtype = resolve_dtype(dtype)
    sd = {n: t for n, t in model.state_dict().items() if not _IGNORED.match(n)}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in sd.items():
        t = t.detach()
        if dtype is not None:
            t = t.to(dtype)
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    names = ([SINGLE_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        tmp = path / f".{fname}.tmp"
        save_file({n: t.contiguous().cpu() for n, t in shard.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / fname)
        for n, t in shard.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    # remove files of an earlier save that this one does not use
    for old in path.glob("*.safetensors"):
        if old.name not in names:
            old.unlink()
    if len(shards) > 1:
        atomic_write_json(path / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    elif (path / INDEX_NAME).exists():
        (path / INDEX_NAME).unlink()
    out_dtype = dtype or next(iter(sd.values())).dtype
    cfg_dict = cfg.to_hf_dict()
    cfg_dict["torch_dtype"] = str(out_dtype).replace("torch.", "")
    atomic_write_text(path / "config.json", json.dumps(cfg_dict, indent=2) + "\n")
    gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
    atomic_write_json(path / "generation_config.json", gen)
    if tokenizer is not None:
        tokenizer.save(path)
    return path
