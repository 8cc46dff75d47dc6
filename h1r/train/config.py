"""SFTConfig: every knob of `h1r sft`, loadable from YAML/TOML/JSON plus `--key value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from h1r.errors import ConfigError

# keys that define the data stream and the schedule: a resumed run must use the same values,
# otherwise "continue exactly" is impossible
RESUME_MUST_MATCH = ("data", "seed", "epochs", "max_steps", "batch_size", "max_seq_len", "pack", "shuffle",
                     "weighting", "hard_weight", "hard_weight_min", "hard_weight_max", "medium_weight",
                     "easy_weight", "pass_rate_hard", "pass_rate_easy", "length_hard", "length_easy",
                     "lr", "min_lr_ratio", "schedule", "warmup_ratio", "warmup_steps", "random_init")


def check_activation_checkpointing(value: bool | float) -> None:
    """The `activation_checkpointing` setting of the SFT and GRPO configs: a boolean or a share of the layers."""
    if not isinstance(value, bool) and not 0.0 < value <= 1.0:
        raise ConfigError(f"activation_checkpointing must be true, false or a fraction in (0, 1], got {value}")


@dataclass
class SFTConfig:
    # ---- what to train on, where to write --------------------------------------------------------
    model: str = ""  # base model directory (HF layout with tokenizer.json + chat template); required
    data: list[str] = field(default_factory=list)  # JSONL files (messages or prompt/response rows); required
    output_dir: str = ""  # run directory: checkpoints/, final/, metrics.jsonl, tb/; required
    random_init: bool = False  # ignore the weights in `model`: random init from its config.json with `seed`
    # ---- data stream -------------------------------------------------------------------------------
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None  # when set, overrides epochs (the stream runs over as many epochs as needed)
    batch_size: int = 32  # global examples per optimiser step (after weighting), over all ranks
    micro_batch_size: int = 4  # rows per forward/backward on each rank (a row = one example, or a packed row)
    max_seq_len: int = 4096  # longer examples are right-trimmed; packed rows hold at most this many tokens
    pack: bool = True  # pack several examples per row (attention + Mamba state reset at boundaries)
    shuffle: bool = True
    # ---- difficulty-aware weighting (see h1r.train.weighting) --------------------------------------
    weighting: Literal["sample", "loss", "none"] = "sample"
    hard_weight: float = 1.5  # hard by label or by length
    hard_weight_min: float = 1.25  # hard by pass rate: weight goes from max (pass rate 0) ...
    hard_weight_max: float = 1.75  # ... down to min (pass rate == pass_rate_hard)
    medium_weight: float = 1.0
    easy_weight: float = 0.5  # 0 drops easy examples
    pass_rate_hard: float = 0.25  # hard if pass_rate <= this
    pass_rate_easy: float = 0.75  # easy if pass_rate >= this
    length_hard: int | None = None  # without labels/pass rate: hard if the response has >= this many tokens
    length_easy: int | None = None  # ... easy if it has <= this many tokens
    # ---- optimisation --------------------------------------------------------------------------------
    lr: float = 1e-4
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # the decay ends at lr * min_lr_ratio
    warmup_ratio: float = 0.04  # fraction of the steps spent warming up (the recipe's 4%)
    warmup_steps: int | None = None  # overrides warmup_ratio
    weight_decay: float = 0.01  # on matrices and embeddings only (not norms, biases, A_log, D, dt_bias)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping (the norm is still logged)
    # ---- hardware ------------------------------------------------------------------------------------
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"  # compute dtype (autocast); auto = bf16 on GPU, fp32 on CPU
    # recompute decoder layers in the backward: true for all, a fraction in (0, 1] for that share, evenly spread
    activation_checkpointing: bool | float = False
    # replay each micro-batch's forward+backward from a CUDA graph (h1r.train.graphed_step): one process,
    # rows laid out as micro_batch_size x max_seq_len, the host out of the loop
    cuda_graph: bool = False
    graph_docs_per_row: int = 128  # documents a row may hold in the graph; a micro-batch with more runs eagerly
    cpu_threads: int | None = None  # torch.set_num_threads when training on CPU (None: torch's default;
    #                                 1 is often fastest on a busy machine; bit-exact resume needs the same value)
    # ---- checkpoints, logs ---------------------------------------------------------------------------
    save_every: int = 0  # steps between training checkpoints (0: only at the end)
    keep_last: int = 2  # training checkpoints kept
    resume: bool = False  # continue from output_dir/checkpoints/latest (fresh start if there is none)
    save_dtype: Literal["auto", "bf16", "fp32"] = "auto"  # final model dtype; auto = the base config's
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True

    def validate(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        for name in ("model", "output_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is required")
        if not self.data:
            raise ConfigError("data is required (one or more JSONL files)")
        if not Path(self.model).is_dir():
            raise ConfigError(f"model: {self.model} is not a directory")
        for name in ("epochs", "batch_size", "micro_batch_size", "max_seq_len", "log_every", "keep_last",
                     "graph_docs_per_row"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
        check_activation_checkpointing(self.activation_checkpointing)
        if self.cuda_graph and self.device == "cpu":
            raise ConfigError("cuda_graph needs a CUDA device, but device is cpu")
        if self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0, got {self.save_every}")
        if self.max_seq_len < 2:
            raise ConfigError("max_seq_len must be >= 2")
        if not 0.0 <= self.pass_rate_hard < self.pass_rate_easy <= 1.0:
            raise ConfigError(f"need 0 <= pass_rate_hard < pass_rate_easy <= 1, got "
                              f"{self.pass_rate_hard}, {self.pass_rate_easy}")
        if not 0 < self.hard_weight_min <= self.hard_weight_max:
            raise ConfigError("need 0 < hard_weight_min <= hard_weight_max")
        for name in ("hard_weight", "medium_weight", "easy_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if (self.length_hard is not None and self.length_easy is not None
                and self.length_easy >= self.length_hard):
            raise ConfigError("need length_easy < length_hard")
        if self.lr <= 0 or not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("need lr > 0, 0 <= min_lr_ratio <= 1, 0 <= warmup_ratio < 1")
