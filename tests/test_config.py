import json
import math

import pytest

from h1r.config import PRESETS, ModelConfig, preset
from h1r.errors import ConfigError


def test_7b_preset_matches_published_shape():
    cfg = preset("falcon-h1-7b")
    assert cfg.conv_dim == 3584 and cfg.in_proj_size == 6680
    assert abs(cfg.num_parameters() / 1e9 - 7.586) < 0.001  # reference §1.3: ~7.586 B
    assert cfg.kv_bytes_per_token(2) == 44 * 2 * 2 * 128 * 2
    assert cfg.ssm_state_bytes(4) == 44 * 24 * 128 * 256 * 4


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip(name):
    cfg = preset(name)
    again = ModelConfig.from_hf_dict(json.loads(cfg.to_json_string()))
    assert again == cfg


def test_reads_transformers_config_json_forms():
    transformers = pytest.importorskip("transformers")
    hf = transformers.FalconH1Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32, mamba_d_ssm=64,
                                     mamba_n_heads=4, num_hidden_layers=2, intermediate_size=32, vocab_size=100)
    d = json.loads(hf.to_json_string())
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.attn_head_dim == 32 and cfg.ssm_head_dim == 16  # head_dim from config, not hidden/heads
    assert cfg.time_step_limit == (0.0, math.inf)
    assert cfg.rope_theta == hf.rope_parameters["rope_theta"]
    # our config.json loads in transformers with the same values
    back = transformers.FalconH1Config.from_dict(json.loads(cfg.to_json_string()))
    assert back.head_dim == 32 and back.mamba_d_head == 16 and back.rope_parameters["rope_theta"] == cfg.rope_theta


@pytest.mark.parametrize("change,msg", [
    (dict(model_type="mamba2"), "unsupported model_type"),
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(mamba_d_head=5), "mamba_d_head"),
    (dict(ssm_multipliers=[1, 2]), "ssm_multipliers needs 5 values"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(hidden_size=-4), "hidden_size must be a positive integer"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4}), "RoPE scaling 'yarn'"),
    (dict(mamba_n_groups=3), "multiple of mamba_n_groups"),
])
def test_invalid_configs_name_the_problem(change, msg):
    d = json.loads(preset("tiny").to_json_string())
    d.update(change)
    with pytest.raises(ConfigError, match=msg):
        ModelConfig.from_hf_dict(d)


def test_unknown_keys_are_preserved():
    d = json.loads(preset("tiny").to_json_string())
    d["attn_layer_indices"] = None
    d["custom_field"] = 3
    out = json.loads(ModelConfig.from_hf_dict(d).to_json_string())
    assert out["custom_field"] == 3 and "attn_layer_indices" in out
