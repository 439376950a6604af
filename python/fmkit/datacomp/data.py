"""Training data from a DataComp-format pool: decoded images and tokenised captions of the
samples a filter kept (its uid .npy), as tensors for fmkit.clip."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import torch

from fmkit.datacomp.pool import read_pool, read_uids, uids_to_array


class WordTokenizer:
    """A lower-cased word-level tokenizer built from captions (offline, deterministic).

    Ids: 0 pad, 1 unknown, then the vocabulary sorted, and end-of-text as the highest id so
    that CLIP's "argmax id" text pooling finds it (as with the CLIP BPE tokenizer).
    `context_length` defaults to the longest text plus end-of-text, at least 16.
    """

    PAD, UNK = 0, 1

    def __init__(self, texts: Iterable[str], context_length: int | None = None):
        split = [self.split(t) for t in texts]
        words = sorted({w for t in split for w in t})
        self.vocab = {w: i + 2 for i, w in enumerate(words)}
        self.eot = len(self.vocab) + 2
        self.context_length = context_length or max([16] + [len(t) + 1 for t in split])

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def __len__(self) -> int:
        return self.eot + 1

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.vocab.get(w, self.UNK) for w in self.split(t)][: self.context_length - 1] + [self.eot]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def load_pool_samples(pool_dir, uids_path=None, image_size: int = 32):
    """(images float [N, 3, S, S] in [0, 1], captions list[str], uid hex list) of the kept samples."""
    pool = read_pool(pool_dir)
    keep = None
    if uids_path is not None:
        kept = read_uids(uids_path)
        keep = {(int(a), int(b)) for a, b in zip(kept["f0"], kept["f1"])}
    images, captions, uids = [], [], []
    for shard in pool.shards:
        for sample in pool.iter_samples(shard, decode=True):
            uid = sample["json"]["uid"]
            if keep is not None:
                arr = uids_to_array([uid])
                if (int(arr["f0"][0]), int(arr["f1"][0])) not in keep:
                    continue
            img = sample["jpg"].convert("RGB").resize((image_size, image_size))
            images.append(np.asarray(img, dtype=np.float32) / 255.0)
            captions.append(sample["txt"])
            uids.append(uid)
    if not images:
        raise ValueError(f"{pool_dir}: no samples selected (empty pool or an empty uid file)")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions, uids


def batches(images: torch.Tensor, tokens: torch.Tensor, batch_size: int, seed: int = 0):
    """A callable returning one shuffled epoch of (images, tokens) batches (train_clip's `data`)."""
    def epoch(counter=[0]):  # noqa: B006 (a new permutation each epoch, deterministic per seed)
        g = torch.Generator().manual_seed(seed + counter[0])
        counter[0] += 1
        perm = torch.randperm(images.shape[0], generator=g)
        for i in range(0, images.shape[0] - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            yield images[idx], tokens[idx]
    return epoch
