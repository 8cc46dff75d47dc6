"""A random tiny checkpoint (transformers-made) with a tokenizer, for engine tests."""

from pathlib import Path

from tests.helpers import hf_model, save_hf, tiny_tokenizer_dir


def make_model_dir(path: Path, seed: int = 1, **overrides) -> Path:
    hf = hf_model(seed=seed, **{"mamba_n_groups": 2, "mamba_rms_norm": True, "mamba_norm_before_gate": False,
                                **overrides})
    save_hf(hf, path)
    tiny_tokenizer_dir(path)
    return path
