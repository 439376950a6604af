"""K classes × n examples per class from a labelled pool (the paper's two-step sampling)."""
from __future__ import annotations

import numpy as np

from fmkit.diversity._checks import as_labels, positive_int


class ClassSubsetSampler:
    """Indices of K classes drawn uniformly from the class pool and n examples drawn uniformly
    within each chosen class, both without replacement; the same seed gives the same indices.

    A class with fewer than n examples makes the pool unusable (ValueError) unless
    on_short="skip", which draws from the classes with at least n examples only; the classes
    left out are in `short_classes` either way. Iterating yields the indices (a torch Sampler).
    """

    def __init__(self, labels, K: int, n: int, seed: int = 0, on_short: str = "raise"):
        y = as_labels(labels, "labels").cpu().numpy()
        self.K, self.n = positive_int(K, "K"), positive_int(n, "n")
        if on_short not in ("raise", "skip"):
            raise ValueError(f"on_short: expected 'raise' or 'skip', got {on_short!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
        self.seed = int(seed)
        pool, counts = np.unique(y, return_counts=True)
        short = counts < self.n
        self.short_classes = pool[short]
        if short.any() and on_short == "raise":
            raise ValueError(f"n={self.n} is larger than the smallest class ({int(counts.min())} examples, class "
                             f"{pool[counts.argmin()]}); {int(short.sum())} of {len(pool)} classes have fewer than "
                             f"n examples. Lower n, or pass on_short='skip' to draw from the other classes only")
        eligible = pool[~short]
        if self.K > len(eligible):
            what = "classes with at least n examples" if short.any() else "classes"
            raise ValueError(f"K={self.K} is more than the {len(eligible)} available {what}"
                             + (f" (n={self.n})" if short.any() else ""))
        rng = np.random.default_rng(self.seed)
        self.classes = np.sort(rng.choice(eligible, self.K, replace=False))
        by_class = np.argsort(y, kind="stable")
        starts = np.searchsorted(y[by_class], self.classes)
        sizes = counts[np.searchsorted(pool, self.classes)]
        self.indices = np.concatenate([
            by_class[s + rng.choice(size, self.n, replace=False)] for s, size in zip(starts, sizes)])

    @property
    def N(self) -> int:
        return self.K * self.n

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices.tolist())

    def __repr__(self) -> str:
        return f"ClassSubsetSampler(K={self.K}, n={self.n}, seed={self.seed}, N={self.N})"
