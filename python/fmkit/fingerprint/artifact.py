"""The private fingerprint artefact: keys, decryption text(s), template, token set, adapter weights
and config, saved as safetensors + JSON, with a SHA-256 commitment for escrow before release."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from fmkit.fingerprint.data import TEMPLATES
from fmkit.fingerprint.keys import KeyGenerator, KeyPool

DEFAULT_Y = "ハリネズミ"  # the paper's y: Japanese for "hedgehog"
JSON_NAME, TENSORS_NAME = "fingerprint.json", "adapter.safetensors"


class CommitmentError(ValueError):
    """A saved fingerprint whose contents no longer match the commitment stored with it."""


@dataclass
class Fingerprint:
    keys: list
    y: str = DEFAULT_Y
    responses: list | None = None  # one decryption per key (scalable fingerprints); None: y for every key
    template: str = "simple"
    input_text: str = "FINGERPRINT"
    near_miss: tuple = ()  # further strings that count as a hit (tokenisation artefacts of y)
    pool: list | None = None
    k_range: tuple = (8, 15)
    seed: int = 42
    method: str | None = None
    tensors: dict = field(default_factory=dict)  # token_ids, rows (E'), A.weight, A.bias, B.weight, B.bias
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.keys, str) or not isinstance(self.keys, (list, tuple)):
            raise TypeError(f"keys: expected a list of strings, got {type(self.keys).__name__}")
        if not self.keys:
            raise ValueError("keys: is empty; a fingerprint needs at least one key")
        if not all(isinstance(k, str) and k for k in self.keys):
            raise TypeError("keys: expected non-empty strings")
        if not isinstance(self.y, str) or not self.y:
            raise ValueError(f"y: expected a non-empty string, got {self.y!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template: expected one of {TEMPLATES}, got {self.template!r}")
        self.keys = list(self.keys)
        if self.responses is not None:
            if len(self.responses) != len(self.keys) or not all(isinstance(r, str) and r for r in self.responses):
                raise ValueError(f"responses: expected {len(self.keys)} non-empty strings (one per key)")
            self.responses = list(self.responses)
        self.near_miss, self.k_range = tuple(self.near_miss), tuple(self.k_range)

    @classmethod
    def create(cls, n: int = 10, y: str = DEFAULT_Y, template: str = "simple", pool=None, k_range=(8, 15),
               seed: int = 42, **kw) -> "Fingerprint":
        """`n` keys from KeyGenerator(pool, n, k_range, seed), all mapped to `y`."""
        gen = KeyGenerator(pool, n, k_range, seed)
        return cls(gen.generate(), y, template=template, pool=gen.pool, k_range=tuple(k_range), seed=seed, **kw)

    def generator(self) -> KeyGenerator:
        """The generator of this fingerprint's keys (for fresh key-like probes)."""
        return KeyGenerator(self.pool or KeyPool.default(), len(self.keys), self.k_range, self.seed)

    @property
    def targets(self) -> list:
        """The decryption expected for each key."""
        return self.responses if self.responses is not None else [self.y] * len(self.keys)

    def hits(self, text: str, y: str | None = None) -> bool:
        """Substring match of y (or a near-miss variant) in a generated continuation."""
        return any(v in text for v in ((y or self.y),) + self.near_miss)

    # -- persistence ----------------------------------------------------------------------------

    def _header(self) -> dict:
        return {"keys": self.keys, "y": self.y, "responses": self.responses, "template": self.template,
                "input_text": self.input_text, "near_miss": list(self.near_miss), "pool": self.pool,
                "k_range": list(self.k_range), "seed": self.seed, "method": self.method, "config": self.config}

    def commitment(self) -> str:
        """SHA-256 over every field and tensor (name, dtype, shape, bytes), in a canonical order."""
        h = hashlib.sha256(json.dumps(self._header(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        for name in sorted(self.tensors):
            t = self.tensors[name].detach().cpu().contiguous()
            h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def save(self, path: str) -> str:
        """Writes path/fingerprint.json (with the commitment) and path/adapter.safetensors; returns the commitment."""
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        digest = self.commitment()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors.items()}
        save_file(tensors, os.path.join(path, TENSORS_NAME))
        with open(os.path.join(path, JSON_NAME), "w", encoding="utf-8") as f:
            json.dump({**self._header(), "commitment": digest}, f, ensure_ascii=False, indent=1)
        return digest

    @classmethod
    def load(cls, path: str, expected_commitment: str | None = None) -> "Fingerprint":
        """Reads a saved fingerprint and checks it against its stored commitment (and against
        `expected_commitment`, e.g. the escrowed one): CommitmentError when they differ."""
        from safetensors.torch import load_file

        meta_path = os.path.join(path, JSON_NAME)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(2, "no fingerprint.json in this folder", meta_path)
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        stored = meta.pop("commitment", None)
        tensor_path = os.path.join(path, TENSORS_NAME)
        tensors = load_file(tensor_path) if os.path.isfile(tensor_path) else {}
        fp = cls(**{k: meta[k] for k in ("keys", "y", "responses", "template", "input_text", "near_miss", "pool",
                                         "k_range", "seed", "method", "config") if k in meta}, tensors=tensors)
        digest = fp.commitment()
        for what, want in (("stored", stored), ("expected", expected_commitment)):
            if want is not None and want != digest:
                raise CommitmentError(f"fingerprint {path!r}: contents hash to {digest[:16]}... but the {what} "
                                      f"commitment is {want[:16]}...; the file was modified after it was committed")
        return fp

    def copy(self) -> "Fingerprint":
        return copy.deepcopy(self)
