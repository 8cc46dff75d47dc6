"""ModelConfig: every field of the Falcon-H1 architecture, read from and written to HF `config.json`.

Field names follow transformers' `FalconH1Config` so a config round-trips unchanged. Derived sizes
(d_ssm, conv_dim, in_proj width) are properties, never stored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from h1r.errors import ConfigError

MODEL_TYPE = "falcon_h1"
ARCHITECTURE = "FalconH1ForCausalLM"


@dataclass
class ModelConfig:
    vocab_size: int = 128000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None  # attention head dim; None -> hidden_size // num_attention_heads (HF rule)
    max_position_embeddings: int = 8192
    rope_theta: float = 1e11
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    # Mamba-2 branch
    mamba_d_ssm: int | None = 1024  # None -> mamba_expand * hidden_size
    mamba_n_heads: int = 128
    mamba_d_head: int | None = None  # None ("auto") -> d_ssm // mamba_n_heads
    mamba_n_groups: int = 1
    mamba_d_state: int = 256
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_chunk_size: int = 256
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    projectors_bias: bool = False  # bias of mamba.out_proj (HF semantics)
    mamba_rms_norm: bool = False
    mamba_norm_before_gate: bool = True
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    # µP multipliers (part of the forward function; never hard-code them)
    embedding_multiplier: float = 1.0
    lm_head_multiplier: float = 1.0
    key_multiplier: float = 1.0
    attention_in_multiplier: float = 1.0
    attention_out_multiplier: float = 1.0
    ssm_in_multiplier: float = 1.0
    ssm_out_multiplier: float = 1.0
    ssm_multipliers: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)  # z, x, B, C, dt
    mlp_multipliers: tuple[float, float] = (1.0, 1.0)  # gate, down
    # tokens and init
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    torch_dtype: str = "bfloat16"
    # keys we do not interpret but must write back unchanged (e.g. attn_layer_indices)
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.time_step_limit = tuple(float(v) for v in self.time_step_limit)
        self.ssm_multipliers = tuple(float(v) for v in self.ssm_multipliers)
        self.mlp_multipliers = tuple(float(v) for v in self.mlp_multipliers)
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def d_ssm(self) -> int:
        return self.mamba_d_ssm if self.mamba_d_ssm is not None else self.mamba_expand * self.hidden_size

    @property
    def ssm_head_dim(self) -> int:
        return self.mamba_d_head if self.mamba_d_head is not None else self.d_ssm // self.mamba_n_heads

    @property
    def conv_dim(self) -> int:
        return self.d_ssm + 2 * self.mamba_n_groups * self.mamba_d_state

    @property
    def in_proj_size(self) -> int:  # [z | x | B | C | dt]
        return 2 * self.d_ssm + 2 * self.mamba_n_groups * self.mamba_d_state + self.mamba_n_heads

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def validate(self) -> None:
        def need(cond: bool, msg: str):
            if not cond:
                raise ConfigError(f"invalid model config: {msg}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "mamba_n_heads", "mamba_n_groups", "mamba_d_state", "mamba_d_conv",
                     "mamba_chunk_size", "max_position_embeddings"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name} must be a positive integer, got {v!r}")
        need(self.hidden_act == "silu", f"hidden_act must be 'silu', got {self.hidden_act!r}")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
             f"({self.num_key_value_heads})")
        need(self.attn_head_dim > 0 and self.attn_head_dim % 2 == 0, f"head_dim must be even and positive, got {self.attn_head_dim}")
        need(self.d_ssm > 0, f"mamba_d_ssm must be positive, got {self.d_ssm}")
        need(self.ssm_head_dim * self.mamba_n_heads == self.d_ssm,
             f"mamba_d_head ({self.ssm_head_dim}) x mamba_n_heads ({self.mamba_n_heads}) must equal mamba_d_ssm ({self.d_ssm})")
        need(self.mamba_n_heads % self.mamba_n_groups == 0,
             f"mamba_n_heads ({self.mamba_n_heads}) must be a multiple of mamba_n_groups ({self.mamba_n_groups})")
        need(self.d_ssm % self.mamba_n_groups == 0, "mamba_d_ssm must be divisible by mamba_n_groups")
        need(self.mamba_d_conv >= 2, f"mamba_d_conv must be >= 2, got {self.mamba_d_conv}")
        need(len(self.ssm_multipliers) == 5, f"ssm_multipliers needs 5 values [z, x, B, C, dt], got {len(self.ssm_multipliers)}")
        need(len(self.mlp_multipliers) == 2, f"mlp_multipliers needs 2 values [gate, down], got {len(self.mlp_multipliers)}")
        need(len(self.time_step_limit) == 2 and self.time_step_limit[0] <= self.time_step_limit[1],
             f"time_step_limit must be (low, high) with low <= high, got {self.time_step_limit}")
        need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
        need(self.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")

    # ---- sizes for users sizing batches --------------------------------------------------------
    def num_parameters(self) -> int:
        D, I, V, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_hidden_layers
        hd, Hq, Hkv = self.attn_head_dim, self.num_attention_heads, self.num_key_value_heads
        attn = D * Hq * hd * 2 + D * Hkv * hd * 2
        if self.attention_bias:
            attn += Hq * hd * 2 + Hkv * hd * 2 - Hq * hd + D
        mamba = D * self.in_proj_size + self.conv_dim * self.mamba_d_conv + 3 * self.mamba_n_heads + self.d_ssm * D
        mamba += self.conv_dim if self.mamba_conv_bias else 0
        mamba += self.in_proj_size if self.mamba_proj_bias else 0
        mamba += D if self.projectors_bias else 0
        mamba += self.d_ssm if self.mamba_rms_norm else 0
        mlp = 3 * D * I + ((2 * I + D) if self.mlp_bias else 0)
        per_layer = attn + mamba + mlp + 2 * D
        return L * per_layer + V * D * (1 if self.tie_word_embeddings else 2) + D

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.attn_head_dim * dtype_bytes

    def conv_state_bytes(self, dtype_bytes: int = 2) -> int:
        return self.num_hidden_layers * self.conv_dim * (self.mamba_d_conv - 1) * dtype_bytes

    def ssm_state_bytes(self, dtype_bytes: int = 4) -> int:
        return self.num_hidden_layers * self.mamba_n_heads * self.ssm_head_dim * self.mamba_d_state * dtype_bytes

    # ---- HF config.json ------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config") -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        mt = d.get("model_type")
        if mt != MODEL_TYPE:
            raise ConfigError(f"{source}: unsupported model_type {mt!r} (H1R loads '{MODEL_TYPE}' checkpoints)")
        d = {k: _decode_json_float(v) for k, v in d.items()}
        if "torch_dtype" not in d and isinstance(d.get("dtype"), str):
            d["torch_dtype"] = d["dtype"]
        rope = d.pop("rope_parameters", None) or {}
        scaling = d.pop("rope_scaling", None)
        if scaling or (rope and rope.get("rope_type", "default") != "default"):
            kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or rope.get("rope_type")
            raise ConfigError(f"{source}: RoPE scaling {kind!r} is not supported (only default RoPE)")
        if d.get("rope_theta") is None:
            d.pop("rope_theta", None)
            if rope.get("rope_theta") is not None:
                d["rope_theta"] = rope["rope_theta"]
        if d.get("mamba_d_head") == "auto":
            d["mamba_d_head"] = None
        if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
            d["num_key_value_heads"] = d["num_attention_heads"]
        if d.get("mlp_multipliers") is None:
            d.pop("mlp_multipliers", None)
        if d.get("ssm_multipliers") is None:
            d.pop("ssm_multipliers", None)
        if d.get("time_step_limit") is None:
            d.pop("time_step_limit", None)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _DROP_ON_READ}
        for k in ("ssm_multipliers", "mlp_multipliers", "time_step_limit"):
            if k in kwargs and not isinstance(kwargs[k], (list, tuple)):
                raise ConfigError(f"{source}: {k} must be a list, got {kwargs[k]!r}")
        if "time_step_limit" in kwargs:
            kwargs["time_step_limit"] = [math.inf if v is None else v for v in kwargs["time_step_limit"]]
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict:
        d = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        d["head_dim"] = self.attn_head_dim
        d["mamba_d_head"] = self.ssm_head_dim
        d["mamba_d_ssm"] = self.d_ssm
        d["time_step_limit"] = list(self.time_step_limit)  # inf is written as Infinity (Python json)
        d["dtype"] = self.torch_dtype  # transformers 5 reads `dtype`, older readers `torch_dtype`
        d["rope_scaling"] = None
        d["mamba_use_mlp"] = True
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path} not found")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        cfg = cls.from_hf_dict(d, source=str(path))
        return cfg

    def to_json_string(self) -> str:
        return json.dumps(self.to_hf_dict(), indent=2) + "\n"


def _decode_json_float(v):
    """transformers 5 writes non-finite floats as {"__float__": "Infinity"}; older writers use Infinity."""
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"])
    if isinstance(v, list):
        return [_decode_json_float(x) for x in v]
    return v


# keys HF writes that are implied by ModelConfig or irrelevant to the forward pass
_DROP_ON_READ = {"architectures", "model_type", "transformers_version", "mamba_use_mlp", "layers_block_type",
                 "layer_types", "use_cache", "num_logits_to_keep", "attention_dropout", "time_step_min",
                 "time_step_max", "time_step_floor", "_name_or_path", "dtype", "output_attentions",
                 "output_hidden_states", "return_dict", "id2label", "label2id", "problem_type",
                 "chunk_size_feed_forward", "is_encoder_decoder", "tie_encoder_decoder", "task_specific_params",
                 "max_length", "min_length", "dtype"}


# ---- named presets: the published shapes ---------------------------------------------------------
# Sources: shapes and multipliers of 0.5B, 1.5B-Deep, 7B and 34B from the Megatron-Bridge providers
# and ../shared/reference/falcon_h1_architecture.md §1.3; 1.5B and 3B shapes from the HF docs table
# (their intermediate_size and multipliers are not published there: marked below as estimates).
_S2 = math.sqrt(2.0)
_7B_SSM = (1 / (2 * _S2), 0.25, 1 / (4 * _S2), 0.5, 1 / (2 * _S2))

PRESETS: dict[str, dict] = {
    # a few M parameters: tests and the CPU demo (vocab is replaced by the trained tokenizer's size)
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=320, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                 mamba_d_ssm=128, mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1, mamba_d_state=16,
                 mamba_chunk_size=64, mamba_rms_norm=True, mamba_norm_before_gate=False,
                 embedding_multiplier=2.0, lm_head_multiplier=0.25, key_multiplier=0.5,
                 attention_out_multiplier=0.5, ssm_in_multiplier=0.8, ssm_out_multiplier=0.5,
                 ssm_multipliers=(0.7, 0.5, 0.35, 0.5, 0.7), mlp_multipliers=(0.8, 0.5), torch_dtype="float32"),
    "falcon-h1-0.5b": dict(vocab_size=32784, hidden_size=1024, intermediate_size=2048, num_hidden_layers=36,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=16384,
                           mamba_d_ssm=1536, mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128,
                           mamba_chunk_size=128, mamba_rms_norm=False, mamba_norm_before_gate=False,
                           embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0390625,
                           key_multiplier=0.39062499999999994, attention_out_multiplier=0.9375,
                           ssm_in_multiplier=1.25, ssm_out_multiplier=0.23570226039551587,
                           mlp_multipliers=(0.8838834764831844, 0.5859375),
                           ssm_multipliers=(0.3535533905932738, 0.25, 0.3535533905932738, 0.5, 0.3535533905932738)),
    # 1.5B: intermediate_size and multipliers are estimates (not in the HF table)
    "falcon-h1-1.5b": dict(vocab_size=65537, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=128, max_position_embeddings=131072,
                           mamba_d_ssm=3072, mamba_n_heads=48, mamba_d_head=64, mamba_d_state=256,
                           mamba_chunk_size=128, mamba_rms_norm=True, mamba_norm_before_gate=False,
                           embedding_multiplier=5.656854249492381, lm_head_multiplier=0.03125,
                           key_multiplier=0.17677669529663687, attention_out_multiplier=0.5, ssm_in_multiplier=1.0,
                           ssm_out_multiplier=0.23570226039551587, mlp_multipliers=(0.7071067811865476, 0.3125),
                           ssm_multipliers=_7B_SSM),
    "falcon-h1-1.5b-deep": dict(vocab_size=65537, hidden_size=1280, intermediate_size=3072, num_hidden_layers=66,
                                num_attention_heads=6, num_key_value_heads=2, head_dim=128,
                                max_position_embeddings=131072, mamba_d_ssm=1536, mamba_n_heads=24, mamba_d_head=64,
                                mamba_d_state=256, mamba_chunk_size=128, mamba_rms_norm=True,
                                mamba_norm_before_gate=False, embedding_multiplier=5.656854249492381,
                                lm_head_multiplier=0.03125, key_multiplier=0.17677669529663687,
                                attention_out_multiplier=0.5, ssm_in_multiplier=1.0,
                                ssm_out_multiplier=0.23570226039551587, mlp_multipliers=(0.7071067811865476, 0.3125),
                                ssm_multipliers=_7B_SSM),
    # 3B: intermediate_size and multipliers are estimates (not in the HF table)
    "falcon-h1-3b": dict(vocab_size=65537, hidden_size=2560, intermediate_size=8192, num_hidden_layers=32,
                         num_attention_heads=10, num_key_value_heads=2, head_dim=128, max_position_embeddings=131072,
                         mamba_d_ssm=4096, mamba_n_heads=32, mamba_d_head=128, mamba_d_state=256,
                         mamba_chunk_size=256, mamba_rms_norm=True, mamba_norm_before_gate=False,
                         embedding_multiplier=5.656854249492381, lm_head_multiplier=0.015625,
                         key_multiplier=0.0625, attention_out_multiplier=0.125, ssm_in_multiplier=0.5,
                         ssm_out_multiplier=0.125, mlp_multipliers=(0.3535533905932738, 0.0625),
                         ssm_multipliers=_7B_SSM),
    "falcon-h1-7b": dict(vocab_size=130049, hidden_size=3072, intermediate_size=12288, num_hidden_layers=44,
                         num_attention_heads=12, num_key_value_heads=2, head_dim=128, max_position_embeddings=262144,
                         mamba_d_ssm=3072, mamba_n_heads=24, mamba_d_head=128, mamba_d_state=256,
                         mamba_chunk_size=256, mamba_rms_norm=True, mamba_norm_before_gate=False,
                         embedding_multiplier=5.656854249492381, lm_head_multiplier=0.013020833333333334,
                         key_multiplier=0.030690398488999456, attention_out_multiplier=0.10416666666666667,
                         ssm_in_multiplier=0.4166666666666667, ssm_out_multiplier=0.11785113019775793,
                         mlp_multipliers=(0.2946278254943948, 0.032552083333333336), ssm_multipliers=_7B_SSM),
    "falcon-h1-34b": dict(vocab_size=261120, hidden_size=5120, intermediate_size=21504, num_hidden_layers=72,
                          num_attention_heads=20, num_key_value_heads=4, head_dim=128, max_position_embeddings=262144,
                          mamba_d_ssm=4096, mamba_n_heads=32, mamba_d_head=128, mamba_n_groups=2, mamba_d_state=256,
                          mamba_chunk_size=128, mamba_rms_norm=True, mamba_norm_before_gate=False,
                          embedding_multiplier=5.656854249492381, lm_head_multiplier=0.0078125,
                          key_multiplier=0.011048543456039804, attention_out_multiplier=0.0375,
                          ssm_in_multiplier=0.25, ssm_out_multiplier=0.08838834764831845,
                          mlp_multipliers=(0.1767766952966369, 0.011160714285714284), ssm_multipliers=_7B_SSM),
}
PRESETS["falcon-h1r-7b"] = dict(PRESETS["falcon-h1-7b"])  # same architecture (reference §1.4)


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return ModelConfig(**{**PRESETS[name], **overrides})
