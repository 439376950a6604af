"""Optional dependencies: which pip extra of fmkit brings each one, and how to install it."""
from __future__ import annotations

# Top-level module name -> the extra of pyproject.toml that installs it.
EXTRA_OF_MODULE = {
    "pyarrow": "datacomp", "py3langid": "datacomp", "PIL": "datacomp",
    "sklearn": "demo",
    "fasttext": "fasttext",
    "transformers": "hf", "tokenizers": "hf",
    "faiss": "bench", "pytest_benchmark": "bench",
    "triton": "triton",
    "gguf": "llm", "accelerate": "llm",
    "peft": "fingerprint", "safetensors": "fingerprint",
    "librosa": "audio",
    "fairlearn": "peers", "lm_eval": "peers", "rank_bm25": "peers", "vendi_score": "peers",
    "albumentations": "peers", "pycocoevalcap": "peers",
}


def install_hint(extra: str) -> str:
    """How to install extra `extra`: fmkit is not on a package index, so from a checkout or a wheel."""
    return (f"pip install '.[{extra}]' in an fmkit checkout (or pip install 'path/to/fmkit-*.whl[{extra}]' "
            "for a wheel)")


def missing_module_message(module: str) -> str | None:
    """One line for a missing optional module, or None when `module` is not an optional dependency."""
    root = module.split(".")[0]
    extra = EXTRA_OF_MODULE.get(root)
    if extra is None:
        return None
    return f"this needs the optional package {root!r}, which is not installed: {install_hint(extra)}"
