"""Instructional Fingerprinting of LLMs (Xu et al., NAACL 2024), for any Hugging Face causal LM.

Keys (KeyGenerator, KeyPool), the private artefact (Fingerprint: safetensors + JSON, commitment),
the two dataset builders, implant (sft | embedding | adapter), verify (batched teacher-forced, with
FSR, false-positive probes and a p-value), user_finetune, perinucleus fingerprints and the
robustness harness. See the README's fingerprint section.
"""
from fmkit.fingerprint.adapter import FingerprintEmbedding, untie
from fmkit.fingerprint.artifact import DEFAULT_Y, CommitmentError, Fingerprint
from fmkit.fingerprint.data import (Example, build_dataset, build_dialogue_dataset, build_simple_dataset, collate,
                                    encode_example, toy_instructions)
from fmkit.fingerprint.implant import PRESETS, implant, user_finetune
from fmkit.fingerprint.keys import KeyGenerator, KeyPool, check_encodable
from fmkit.fingerprint.verify import (VerifyResult, bos_emission_rate, poisson_binomial_tail, sampled_fsr, score,
                                      verify)

__all__ = ["FingerprintEmbedding", "untie", "DEFAULT_Y", "CommitmentError", "Fingerprint", "Example", "build_dataset",
           "build_dialogue_dataset", "build_simple_dataset", "collate", "encode_example", "toy_instructions", "PRESETS",
           "implant", "user_finetune", "KeyGenerator", "KeyPool", "check_encodable", "VerifyResult",
           "bos_emission_rate", "poisson_binomial_tail", "sampled_fsr", "score", "verify"]
