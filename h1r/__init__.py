"""H1R: the Falcon-H1R system as a toolkit.

Public API (imported lazily so `import h1r` stays cheap):
    ModelConfig, load_model, save_model, load_tokenizer, LLM, SamplingParams
"""

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "h1r.config",
    "load_model": "h1r.checkpoint",
    "save_model": "h1r.checkpoint",
    "load_tokenizer": "h1r.tokenizer",
    "Tokenizer": "h1r.tokenizer",
    "FalconH1ForCausalLM": "h1r.model.falcon_h1",
    "LLM": "h1r.engine.llm",
    "SamplingParams": "h1r.engine.sampling_params",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'h1r' has no attribute {name!r}")
