"""The Generative AI Paradox (West et al., arXiv:2311.00059) as a reusable evaluation harness.

- `score_choices`: multiple-choice log-likelihoods, each context run once (packed tree mask or KV reuse), lm-eval's
  tokenisation, acc / acc_norm / acc_bytes / acc_mutual_info and per-token log-prob export.
- `selective_eval`, `interrogative_eval`, `evaluation_paradox` (Oh et al.): the protocols.
- `stats`: phi / point-biserial / Spearman correlations, Cohen's and Fleiss' kappa, paired bootstrap.
"""
from fmkit.paradox.protocol import (HFGenerator, HumanBaseline, InterrogativeReport, LetterChooser,
                                    LMPairwiseJudge, LoglikAnswerer, LoglikChooser, PairwiseJudge, ParadoxItem,
                                    Question, ReferenceMetricJudge, SelectiveReport, StoredJudge,
                                    dataset_correlations, evaluation_paradox, exact_match, generation_score,
                                    interrogative_eval, paired_agreement, paradox_holds, run_sharded,
                                    selective_eval, shuffled_candidates, token_f1)
from fmkit.paradox.scoring import (ChoiceScores, TruncationWarning, encode_pair, reference_token_logprobs,
                                   score_choices, score_token_requests)
from fmkit.paradox.stats import cohen_kappa, fleiss_kappa, paired_bootstrap, pearson, spearman

__all__ = [
    "ChoiceScores", "HFGenerator", "HumanBaseline", "InterrogativeReport", "LMPairwiseJudge", "LetterChooser",
    "LoglikAnswerer", "LoglikChooser", "PairwiseJudge", "ParadoxItem", "Question", "ReferenceMetricJudge",
    "SelectiveReport", "StoredJudge", "TruncationWarning", "cohen_kappa", "dataset_correlations", "encode_pair",
    "evaluation_paradox", "exact_match", "fleiss_kappa", "generation_score", "interrogative_eval",
    "paired_agreement", "paired_bootstrap", "paradox_holds", "pearson", "reference_token_logprobs",
    "run_sharded", "score_choices", "score_token_requests", "selective_eval", "shuffled_candidates", "spearman",
    "token_f1",
]
