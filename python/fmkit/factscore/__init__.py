"""FActScore (Min et al., EMNLP 2023, arXiv:2305.14251), offline: atomic facts from a local LM,
a SQLite knowledge source built from any {title, text} JSONL, BM25 and dense retrieval (fmkit's
exact kNN), batched single-forward-pass verification, the NP scorer, the gamma length penalty and
bootstrap confidence intervals. See fmkit/factscore/scorer.py for the entry point, FactScorer."""
from fmkit.factscore.atomic_facts import DEMOS, AtomicFactGenerator, load_demos, parse_facts
from fmkit.factscore.bm25 import BM25
from fmkit.factscore.knowledge import KnowledgeSource, chunk_sections
from fmkit.factscore.lm import HFGenerator, LMCache, load_causal_lm, smollm2_path
from fmkit.factscore.retrieval import BM25Retriever, DenseRetriever, HFEncoder, minilm_path
from fmkit.factscore.scorer import (FactScorer, bootstrap_ci, dedupe, estimator_error, human_factscore,
                                    is_verifiable, length_penalty, summarize)
from fmkit.factscore.text import SentenceSplitter, is_abstain, parse_true_false
from fmkit.factscore.verify import (Ensemble, LogitVerifier, NPScorer, TextVerifier, prompt_parts,
                                    verification_prompt)

__all__ = ["AtomicFactGenerator", "BM25", "BM25Retriever", "DEMOS", "DenseRetriever", "Ensemble", "FactScorer",
           "HFEncoder", "HFGenerator", "KnowledgeSource", "LMCache", "LogitVerifier", "NPScorer", "SentenceSplitter",
           "TextVerifier", "bootstrap_ci", "chunk_sections", "dedupe", "estimator_error", "human_factscore",
           "is_abstain", "is_verifiable", "length_penalty", "load_causal_lm", "load_demos", "minilm_path",
           "parse_facts", "parse_true_false", "prompt_parts", "smollm2_path", "summarize", "verification_prompt"]
