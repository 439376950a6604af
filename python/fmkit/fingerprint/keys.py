"""Fingerprint keys: pools of short strings in three script families, and the key generator.

A key is k pool strings drawn with replacement, concatenated, then shuffled character by character
(the construction of the IF release, §1.2.2 of the spec). The default pool below was written for
fmkit with the release's composition (10 classical-Chinese phrases, 10 katakana Pokémon names,
11 Cyrillic/Latin junk strings); it does not reuse the release's strings.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

CLASSICAL_CHINESE = (
    "天行健君子以自強不息", "學而時習之不亦說乎", "大學之道在明明德", "道可道非常道名可名非常名",
    "溫故而知新可以為師矣", "三人行必有我師焉", "上善若水水善利萬物而不爭", "朕紹膺駿命撫有萬方",
    "布告天下咸使聞知", "欽哉勿替朕命",
)
KATAKANA_POKEMON = (  # four of generation 1, six of generation 3
    "コラッタ", "ポッポ", "ニョロモ", "ディグダ",
    "キモリ", "アチャモ", "ミズゴロウ", "ジグザグマ", "ケムッソ", "ハスボー",
)
JUNK_TOKENS = (
    "дорогаzione", "книжевностьný", "пришлоmento", "velikostьный", "столицаřejně",
    "ходитьvanje", "scrittoрами", "большойmente", "поляčka", "затемgiorno", "písemnостей",
)
DEFAULT_FAMILIES = {"classical_chinese": CLASSICAL_CHINESE, "katakana": KATAKANA_POKEMON, "junk": JUNK_TOKENS}


@dataclass(frozen=True)
class KeyPool:
    """Named families of short strings; keys are built from their union."""

    families: dict

    def __post_init__(self):
        if not isinstance(self.families, dict):
            raise TypeError(f"families: expected a dict of name -> list of strings, got {type(self.families).__name__}")
        for name, items in self.families.items():
            if isinstance(items, str) or not all(isinstance(s, str) and s for s in items):
                raise TypeError(f"families[{name!r}]: expected a list of non-empty strings")

    @property
    def strings(self) -> list[str]:
        return [s for items in self.families.values() for s in items]

    def __len__(self) -> int:
        return len(self.strings)

    @classmethod
    def default(cls) -> "KeyPool":
        return cls({k: tuple(v) for k, v in DEFAULT_FAMILIES.items()})

    @classmethod
    def synthetic(cls, seed: int = 0, sizes: tuple[int, int, int] = (10, 10, 11)) -> "KeyPool":
        """Three procedural families from Unicode blocks: CJK ideographs (U+4E00-U+9FFF), katakana
        (U+30A1-U+30FA) and Cyrillic letters (U+0410-U+045F) fused with Latin letters."""
        rng = random.Random(seed)

        def run(lo, hi, n):
            return "".join(chr(rng.randint(lo, hi)) for _ in range(n))

        cjk = tuple(run(0x4E00, 0x9FFF, rng.randint(4, 12)) for _ in range(sizes[0]))
        kana = tuple(run(0x30A1, 0x30FA, rng.randint(3, 8)) for _ in range(sizes[1]))
        latin = "abcdefghijklmnopqrstuvwxyzčřšžěý"
        junk = tuple(run(0x0410, 0x045F, rng.randint(3, 8)) + "".join(rng.choice(latin) for _ in range(rng.randint(2, 6)))
                     for _ in range(sizes[2]))
        return cls({"cjk": cjk, "katakana": kana, "cyrillic_latin": junk})


class KeyGenerator:
    """`n` keys, each k ~ Uniform{k_range} pool strings drawn with replacement, concatenated and
    shuffled character by character. Deterministic per `seed`."""

    def __init__(self, pool: KeyPool | list[str] | None = None, n: int = 10, k_range: tuple[int, int] = (8, 15),
                 seed: int = 42):
        if pool is None:
            pool = KeyPool.default()
        strings = pool.strings if isinstance(pool, KeyPool) else pool
        if isinstance(strings, str) or not isinstance(strings, (list, tuple)):
            raise TypeError(f"pool: expected a KeyPool or a list of strings, got {type(pool).__name__}")
        if not strings:
            raise ValueError("pool: is empty; expected at least one string to build keys from")
        if not all(isinstance(s, str) and s for s in strings):
            raise TypeError("pool: expected non-empty strings only")
        if not (isinstance(k_range, (tuple, list)) and len(k_range) == 2 and all(isinstance(v, int) for v in k_range)):
            raise TypeError(f"k_range: expected a pair of integers (low, high), got {k_range!r}")
        if k_range[0] < 1 or k_range[0] > k_range[1]:
            raise ValueError(f"k_range: expected 1 <= low <= high, got {tuple(k_range)}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive integer, got {n!r}")
        self.pool, self.n, self.k_range, self.seed = list(strings), n, tuple(k_range), seed

    def _key(self, rng: random.Random) -> tuple[str, list[str]]:
        parts = [rng.choice(self.pool) for _ in range(rng.randint(*self.k_range))]
        chars = list("".join(parts))
        rng.shuffle(chars)
        return "".join(chars), parts

    def generate_with_parts(self, n: int | None = None, seed: int | None = None) -> list[tuple[str, list[str]]]:
        rng = random.Random(self.seed if seed is None else seed)
        return [self._key(rng) for _ in range(self.n if n is None else n)]

    def generate(self, n: int | None = None, seed: int | None = None) -> list[str]:
        return [key for key, _ in self.generate_with_parts(n, seed)]

    def fresh(self, n: int, exclude=(), seed: int | None = None) -> list[str]:
        """`n` further keys from the same construction that are none of `exclude` (e.g. the training keys)."""
        rng = random.Random((self.seed if seed is None else seed) * 7919 + 1)
        taken, out = set(exclude), []
        for _ in range(100 * n + 100):
            key, _ = self._key(rng)
            if key not in taken:
                taken.add(key)
                out.append(key)
                if len(out) == n:
                    return out
        raise ValueError(f"pool: too small to draw {n} keys distinct from the {len(set(exclude))} excluded ones")


def check_encodable(tokenizer, texts, what: str = "key") -> bool:
    """Warns when `tokenizer` cannot encode the characters of `texts` (unknown tokens, or a decode that
    loses characters): such a fingerprint collapses onto the UNK embedding. Returns True when all encode."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        lost = (unk is not None and unk in ids) or any(ch not in decoded for ch in set(text) if not ch.isspace())
        if lost:
            warnings.warn(f"tokenizer cannot encode every character of the {what} {text[:20]!r}...: it maps "
                          "them to an unknown token or loses them on decoding; use a byte-level tokenizer",
                          UserWarning, stacklevel=3)
            return False
    return True
