"""Okapi BM25 with rank_bm25's scoring (k1 = 1.5, b = 0.75, idf floor epsilon * mean idf), as one
sparse matrix product: the per-(passage, term) weights are computed once per corpus, so a batch of
queries costs one `scipy.sparse` product instead of a Python loop over query words per passage."""
from __future__ import annotations

from collections import Counter

import numpy as np


def whitespace_tokens(text: str) -> list[str]:
    return text.split()


class BM25:
    """`BM25(corpus_tokens).scores(query_tokens)` equals rank_bm25.BM25Okapi(...).get_scores(...):
    idf = log(N - n + 0.5) - log(n + 0.5), negative idfs replaced by epsilon * mean idf, and a word
    repeated in the query counts once per repetition."""

    def __init__(self, corpus: list[list[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        from scipy import sparse

        if not isinstance(corpus, (list, tuple)) or not corpus:
            raise ValueError("corpus: expected a non-empty list of token lists")
        self.k1, self.b, self.epsilon = k1, b, epsilon
        n_docs = len(corpus)
        lengths = np.array([len(d) for d in corpus], dtype=np.float64)
        avgdl = lengths.sum() / n_docs
        vocab: dict[str, int] = {}
        rows, cols, tfs = [], [], []
        for i, doc in enumerate(corpus):
            for word, tf in Counter(doc).items():
                rows.append(i)
                cols.append(vocab.setdefault(word, len(vocab)))
                tfs.append(tf)
        rows, cols, tfs = np.array(rows), np.array(cols, dtype=np.int64), np.array(tfs, dtype=np.float64)
        df = np.bincount(cols, minlength=len(vocab)).astype(np.float64)
        idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
        # rank_bm25 averages over all words (negatives included) before flooring the negatives
        floor = epsilon * (idf.sum() / len(idf)) if len(idf) else 0.0
        idf = np.where(idf < 0, floor, idf)
        norm = k1 * (1 - b + b * lengths[rows] / avgdl) if avgdl > 0 else np.full(len(rows), k1 * (1 - b))
        weights = idf[cols] * tfs * (k1 + 1) / (tfs + norm)
        self.vocab, self.idf, self.n_docs = vocab, idf, n_docs
        self.matrix = sparse.csc_matrix((weights, (rows, cols)), shape=(n_docs, len(vocab)))

    def _query_matrix(self, queries: list[list[str]]):
        from scipy import sparse

        rows, cols, vals = [], [], []
        for i, q in enumerate(queries):
            for word, count in Counter(q).items():
                j = self.vocab.get(word)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
                    vals.append(float(count))
        return sparse.csr_matrix((vals, (rows, cols)), shape=(len(queries), len(self.vocab)))

    def scores(self, query: list[str]) -> np.ndarray:
        """[n_docs] float64 scores of one tokenised query."""
        return self.batch_scores([query])[0]

    def batch_scores(self, queries: list[list[str]]) -> np.ndarray:
        """[n_queries, n_docs] float64 scores."""
        return np.asarray((self._query_matrix(queries) @ self.matrix.T).todense())

    def top_k(self, queries: list[list[str]], k: int) -> np.ndarray:
        """[n_queries, min(k, n_docs)] passage indices, best first; ties go to the lower index."""
        if k < 1:
            raise ValueError(f"k: expected a positive integer, got {k}")
        s = self.batch_scores(queries)
        k = min(k, self.n_docs)
        return np.argsort(-s, axis=1, kind="stable")[:, :k]
