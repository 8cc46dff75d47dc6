"""Checkpoint interop with transformers and strict validation of bad checkpoints."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from h1r.checkpoint import load_model, save_model
from h1r.errors import CheckpointError
from tests.helpers import hf_model, save_hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    hf = hf_model(seed=4, mamba_n_groups=2, mamba_rms_norm=True, mamba_norm_before_gate=False)
    return hf, save_hf(hf, tmp_path_factory.mktemp("hf"))


def test_round_trip_through_h1r_is_identical(hf_dir, tmp_path):
    import transformers

    hf, path = hf_dir
    ours = load_model(path, dtype="float32")
    save_model(ours, tmp_path / "h1r")
    back = transformers.FalconH1ForCausalLM.from_pretrained(tmp_path / "h1r").float().eval()
    sd0, sd1 = hf.state_dict(), back.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    ids = torch.randint(0, 320, (1, 50))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, hf(ids).logits)
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-4, atol=1e-5)


def test_sharded_loads_the_same_as_single(hf_dir, tmp_path):
    _, path = hf_dir
    single = load_model(path, dtype="float32")
    save_model(single, tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    sharded = load_model(tmp_path / "sharded", dtype="float32")
    for (n, a), (m, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert n == m and torch.equal(a, b)
    # re-saving as a single file removes the old shards and index
    save_model(sharded, tmp_path / "sharded")
    assert not (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors")) == ["model.safetensors"]


def test_tied_embeddings_and_dtypes(tmp_path):
    hf = hf_model(seed=5, tie_word_embeddings=True)
    path = save_hf(hf, tmp_path / "tied")
    m = load_model(path, dtype="bfloat16")
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert m.model.layers[0].mamba.in_proj.weight.dtype == torch.bfloat16
    save_model(m, tmp_path / "out")
    assert "lm_head.weight" not in load_file(tmp_path / "out" / "model.safetensors")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    sd = load_file(f)
    fn(sd)
    save_file(sd, f, metadata={"format": "pt"})


def test_missing_tensor(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    _edit_tensors(p, lambda sd: sd.pop("model.layers.1.mamba.A_log"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mamba\.A_log'"):
        load_model(p)


def test_unexpected_tensor(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    _edit_tensors(p, lambda sd: sd.__setitem__("model.layers.0.mamba.extra", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mamba\.extra'"):
        load_model(p)


def test_wrong_shape(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    _edit_tensors(p, lambda sd: sd.__setitem__("model.layers.0.self_attn.k_proj.weight", torch.zeros(24, 64)))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight' has shape \[24, 64\]"):
        load_model(p)


def test_unsupported_model_type(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    cfg = json.loads((p / "config.json").read_text())
    cfg["model_type"] = "llama"
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported model_type 'llama'"):
        load_model(p)


def test_inconsistent_config(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    cfg = json.loads((p / "config.json").read_text())
    cfg["mamba_d_head"] = 7
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="mamba_d_head"):
        load_model(p)


def test_truncated_file(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    f = p / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated file: tensor '.+'"):
        load_model(p)


def test_corrupt_header(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    f = p / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"not json ###"
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt safetensors header"):
        load_model(p)


def test_missing_shard_and_config(hf_dir, tmp_path):
    m = load_model(hf_dir[1], dtype="float32")
    p = save_model(m, tmp_path / "s", max_shard_size="40KB")
    (p / "model-00002-of-" f"{len(list(p.glob('*.safetensors'))):05d}.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"shard model-00002-of-\d+\.safetensors is listed but missing"):
        load_model(p)
    (p / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(p)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "nope")


def test_invalid_json_config(hf_dir, tmp_path):
    p = _copy(hf_dir[1], tmp_path / "c")
    (p / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_model(p)


def test_loading_keeps_a_single_copy_in_memory(tmp_path):
    """Peak RSS increase while loading stays under 1.3x the checkpoint size (bench/load_memory.py
    measures the same for a ~500M-parameter checkpoint)."""
    import subprocess
    import sys

    from h1r.checkpoint import init_model
    from h1r.config import preset

    cfg = preset("tiny", hidden_size=512, intermediate_size=2048, num_hidden_layers=6, vocab_size=32000,
                 mamba_d_ssm=512, mamba_n_heads=8, mamba_d_head=64, num_attention_heads=8, head_dim=64)
    save_model(init_model(cfg, dtype=torch.bfloat16), tmp_path / "big", max_shard_size="30MB")
    save_model(init_model(preset("tiny"), dtype=torch.bfloat16), tmp_path / "warmup")
    size = sum(f.stat().st_size for f in (tmp_path / "big").glob("*.safetensors"))
    child = (  # a warm-up load first, so one-time code/library loading is not counted
        "import sys, torch, h1r.checkpoint as c\n"
        "rss = lambda k: next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(k))\n"
        "c.load_model(sys.argv[2], dtype=torch.bfloat16)\n"
        "open('/proc/self/clear_refs', 'w').write('5'); base = rss('VmRSS')\n"
        "m = c.load_model(sys.argv[1], dtype=torch.bfloat16)\n"
        "print(rss('VmHWM') - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path / "big"), str(tmp_path / "warmup")],
                         capture_output=True, text=True, check=True)
    increase = int(out.stdout.strip().splitlines()[-1])
    assert size > 50e6
    assert increase < 1.3 * size, f"peak increase {increase / 1e6:.0f} MB for a {size / 1e6:.0f} MB checkpoint"
