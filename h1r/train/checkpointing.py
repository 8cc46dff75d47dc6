"""Training checkpoints that survive a crash at any moment, and resume bit-exactly.

Layout under `root` (e.g. RUN/checkpoints):
    step_00000040/
        dcp/                 model + optimiser, torch.distributed.checkpoint (one shard file per rank;
                             loads into any number of ranks, resharding as needed)
        scheduler.pt         LR scheduler state
        rng/rank_00000.pt    python, numpy, torch CPU and CUDA RNG states of each rank
        trainer_state.json   step, data position, config, world size (written last)
    latest                   name of the newest complete checkpoint (replaced atomically)

A save writes everything into `.tmp_step_…`, fsyncs it, then renames the directory: the rename is the
commit, so a crash leaves either the previous checkpoints untouched or the new one complete. `latest`
is for people and tools; resuming takes the newest complete `step_*` directory (the same one, unless a
crash hit between the commit and the pointer update).
The trainer is model-agnostic: SFT and GRPO pass their module, optimiser, scheduler and a JSON-able dict.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from h1r.errors import CheckpointError
from h1r.train.distributed import DistInfo, barrier
from h1r.utils.io import atomic_write_json, atomic_write_text, fsync_dir

FORMAT_VERSION = 1
STATE_FILE = "trainer_state.json"
_saves_in_process = 0


def capture_rng() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def commit_dir(tmp: Path, final: Path) -> None:
    """Atomically make `tmp` (fully written) appear as `final`, replacing any old `final`."""
    _fsync_tree(tmp)
    trash = final.with_name(f".trash_{final.name}")
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _torch_save_synced(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _debug_crash_hook() -> None:
    """Tests: H1R_DEBUG_CRASH_IN_SAVE=k kills the process in the middle of its k-th save."""
    k = os.environ.get("H1R_DEBUG_CRASH_IN_SAVE")
    if k and int(k) == _saves_in_process:
        os._exit(9)


def _dcp():
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    return dcp, get_state_dict, set_state_dict


class CheckpointManager:
    def __init__(self, root: str | Path, info: DistInfo, keep_last: int = 2):
        self.root, self.info, self.keep_last = Path(root), info, max(1, keep_last)

    # ---- finding ----------------------------------------------------------------------------------
    @staticmethod
    def is_complete(path: Path) -> bool:
        return (path / STATE_FILE).is_file() and (path / "dcp" / ".metadata").is_file()

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob("step_*") if p.is_dir() and self.is_complete(p)]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        """The newest complete checkpoint. Normally what `latest` names; after a crash between the
        commit and the pointer update, the newer committed directory wins."""
        found = self.complete_checkpoints()
        return found[-1] if found else None

    # ---- saving -----------------------------------------------------------------------------------
    def save(self, step: int, model: nn.Module, optimizer, scheduler=None, state: dict | None = None,
             extras: dict | None = None) -> Path:
        """Collective: every rank calls it. Returns the committed checkpoint directory. `extras`: name ->
        object that torch.save can write with plain containers and tensors (e.g. GRPO's rollout cache),
        written by rank 0 as extras/NAME.pt and read back with `load_extra`."""
        global _saves_in_process
        _saves_in_process += 1
        dcp, get_state_dict, _ = _dcp()
        name = f"step_{step:08d}"
        tmp, final = self.root / f".tmp_{name}", self.root / name
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(self.info)
        msd, osd = get_state_dict(model, optimizer)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process.*")
            dcp.save({"model": msd, "optim": osd}, storage_writer=dcp.FileSystemWriter(str(tmp / "dcp")))
        _torch_save_synced(capture_rng(), tmp / "rng" / f"rank_{self.info.rank:05d}.pt")
        _debug_crash_hook()
        barrier(self.info)
        if self.info.is_main:
            if scheduler is not None:
                _torch_save_synced(scheduler.state_dict(), tmp / "scheduler.pt")
            for extra, obj in (extras or {}).items():
                _torch_save_synced(obj, tmp / "extras" / f"{extra}.pt")
            atomic_write_json(tmp / STATE_FILE, {"format": FORMAT_VERSION, "step": step,
                                                 "world_size": self.info.world_size, **(state or {})})
            commit_dir(tmp, final)
            atomic_write_text(self.root / "latest", name + "\n")
            self._prune()
        barrier(self.info)
        return final

    def _prune(self) -> None:
        for old in self.complete_checkpoints()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp_step_*"):  # left by a crash during an earlier save
            shutil.rmtree(stale, ignore_errors=True)

    # ---- loading ----------------------------------------------------------------------------------
    def load(self, path: str | Path, model: nn.Module, optimizer, scheduler=None) -> dict:
        """Collective. Restores model, optimiser, scheduler and this rank's RNG; returns the trainer state."""
        path = Path(path)
        if not self.is_complete(path):
            raise CheckpointError(f"{path}: not a complete training checkpoint")
        try:
            state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path / STATE_FILE}: invalid JSON ({e})") from None
        if state.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT_VERSION}")
        dcp, get_state_dict, set_state_dict = _dcp()
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

        msd, osd = get_state_dict(model, optimizer)
        sd = {"model": msd, "optim": osd}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
            try:
                dcp.load(sd, storage_reader=dcp.FileSystemReader(str(path / "dcp")))
            except (Exception, CheckpointException) as e:  # another model or optimiser layout
                reason = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                raise CheckpointError(f"{path}: cannot load model/optimizer state "
                                      f"({reason[-1].strip()[:300]})") from None
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        saved_world = int(state.get("world_size", 1))
        rng_file = path / "rng" / f"rank_{self.info.rank % saved_world:05d}.pt"
        if rng_file.is_file():
            restore_rng(torch.load(rng_file, weights_only=True))
        return state

    @staticmethod
    def load_extra(path: str | Path, name: str):
        """An object saved with `save(..., extras={name: obj})`; None if the checkpoint has none."""
        f = Path(path) / "extras" / f"{name}.pt"
        if not f.is_file():
            return None
        try:
            return torch.load(f, weights_only=True)
        except Exception as e:  # a torn or foreign file
            raise CheckpointError(f"{f}: cannot read ({e})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt")


def export_hf_model(root: nn.Module, lm_config, info: DistInfo, out_dir: str | Path, copy_files_from=None,
                    dtype=None, prefix: str = "lm.") -> Path | None:
    """Collective: gather the full weights of the (possibly FSDP-sharded) `root` on rank 0 and write
    the LM (keys under `prefix`) in the HF layout at `out_dir`, atomically, with the tokenizer files of
    the base model directory `copy_files_from` copied unchanged. Returns the path on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = None
    if info.is_main:
        from h1r.checkpoint import init_buffers, save_model
        from h1r.model.falcon_h1 import FalconH1ForCausalLM

        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        with torch.device("meta"):
            lm = FalconH1ForCausalLM(lm_config)
        lm.load_state_dict(sd, assign=True, strict=True)
        if lm_config.tie_word_embeddings:
            lm.lm_head.weight = lm.model.embed_tokens.weight
        init_buffers(lm)
        out = Path(out_dir)
        tmp = out.with_name(f".tmp_{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(lm, tmp, dtype=dtype)
        for name in TOKENIZER_FILES if copy_files_from else ():
            if (Path(copy_files_from) / name).is_file():
                shutil.copy2(Path(copy_files_from) / name, tmp / name)
        commit_dir(tmp, out)
    barrier(info)
    return out
