"""The F-Adapter embedding wrapper (IF_adapter) and the model surgery around it.

For a token t in the trainable set T the embedding is residual[t] + B(A(rows[t])); every other
token keeps the frozen table's row. `rows` is E' (trainable during implanting, the suspect's rows
during verification); the residual is E'[t]'s current value (fmkit; gradient through the adapter
branch only: with B = 0 at init, B trains from step 1 and A and E' from step 2) or a fixed table
(the release: E0 while training, the publisher's rows in its verifier).
"""
from __future__ import annotations

import math

import torch
from torch import nn

TENSOR_NAMES = ("token_ids", "rows", "A.weight", "A.bias", "B.weight", "B.bias")


class FingerprintEmbedding(nn.Module):
    def __init__(self, weight: torch.Tensor, token_ids: torch.Tensor, rows: torch.Tensor | None = None,
                 r: int = 16, init: str = "lora", residual: torch.Tensor | None = None, a_init: str = "kaiming",
                 padding_idx: int | None = None, seed: int = 0):
        super().__init__()
        if init not in ("lora", "release", "none"):
            raise ValueError(f"init: expected 'lora' or 'release', got {init!r}")
        if a_init not in ("kaiming", "normal"):
            raise ValueError(f"a_init: expected 'kaiming' or 'normal', got {a_init!r}")
        token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=weight.device).unique()
        vocab, d = weight.shape
        self.register_buffer("weight", weight.detach(), persistent=False)  # frozen table (E0 or the suspect's)
        self.register_buffer("token_ids", token_ids)
        lookup = torch.full((vocab,), -1, dtype=torch.long, device=weight.device)
        lookup[token_ids] = torch.arange(len(token_ids), device=weight.device)
        self.register_buffer("lookup", lookup, persistent=False)
        self.rows = nn.Parameter((weight[token_ids] if rows is None else rows).detach().clone())
        self.register_buffer("residual", None if residual is None else residual.detach().clone())
        self.A = nn.Linear(d, r, bias=True, device=weight.device, dtype=weight.dtype)
        self.B = nn.Linear(r, d, bias=True, device=weight.device, dtype=weight.dtype)
        self.padding_idx = padding_idx
        self.register_buffer("anchor", self.rows.detach().clone(), persistent=False)  # E0[T], the vanilla rows
        self.use_anchor = False  # feed the vanilla rows instead of E' (what a vanilla-derived suspect shows)
        with torch.no_grad():
            for p in (self.A.bias, self.B.weight, self.B.bias):
                p.zero_()
            if init == "release":  # the release: everything zero, so only B's bias ever trains
                self.A.weight.zero_()
            elif init == "lora":
                g = torch.Generator(device="cpu").manual_seed(seed)
                if a_init == "kaiming":  # LoRA's A: Kaiming-uniform with a = sqrt(5)
                    bound = 1.0 / math.sqrt(d)
                    self.A.weight.copy_((torch.rand(r, d, generator=g) * 2 - 1) * bound)
                else:
                    self.A.weight.copy_(torch.randn(r, d, generator=g) * 0.02)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = nn.functional.embedding(ids, self.weight)
        slot = self.lookup[ids]
        hit = slot >= 0
        if hit.any():
            s = slot[hit]
            rows = self.anchor[s] if self.use_anchor else self.rows[s]
            # The residual is E'[t]'s current value without its gradient: E' learns only through the
            # adapter branch, so the published rows (E' merged, no adapter) are not trained to fire.
            residual = rows.detach() if self.residual is None else self.residual[s]
            out = out.index_put((hit,), residual + self.B(self.A(rows)))
        return out

    def merged_weight(self) -> torch.Tensor:
        """The published table: the frozen one with the rows of T replaced by E' (no adapter)."""
        w = self.weight.clone()
        w[self.token_ids] = self.rows.detach()
        return w

    def state_tensors(self) -> dict:
        return {"token_ids": self.token_ids.cpu(), "rows": self.rows.detach().cpu(),
                "A.weight": self.A.weight.detach().cpu(), "A.bias": self.A.bias.detach().cpu(),
                "B.weight": self.B.weight.detach().cpu(), "B.bias": self.B.bias.detach().cpu()}

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, tensors: dict, rows: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None) -> "FingerprintEmbedding":
        """A frozen wrapper around `weight` with a saved adapter; `rows` default to weight[T]."""
        missing = [n for n in TENSOR_NAMES if n not in tensors]
        if missing:
            raise ValueError(f"fingerprint: has no adapter tensors {missing}; was it implanted with method='adapter'?")
        ids = tensors["token_ids"].to(weight.device)
        r = tensors["A.weight"].shape[0]
        mod = cls(weight, ids, rows=weight[ids] if rows is None else rows, r=r, init="none", residual=residual)
        with torch.no_grad():
            for name in ("A.weight", "A.bias", "B.weight", "B.bias"):
                mod.get_parameter(name).copy_(tensors[name].to(weight))
        return mod.requires_grad_(False)


def tied(model) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def untie(model) -> bool:
    """Gives the LM head its own copy of a tied embedding, so editing input rows leaves the output
    logits alone. Returns whether the model was tied."""
    if not tied(model):
        return False
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return True
