"""Tiny random models and a locally trained tokenizer for tests and the quick benchmark
(seconds on a CPU, nothing downloaded)."""
from __future__ import annotations

import random

import torch

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]"]


def word_tokenizer(texts, extra_words=("True", "False")):
    """A word-level tokenizer trained on `texts` (whitespace and punctuation pre-split), with
    "True"/"False" guaranteed in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1)
    tok.train_from_iterator(list(texts) + [" ".join(extra_words)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", mask_token="[MASK]")


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      max_position_embeddings=8192, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_mlm(vocab_size: int, seed: int = 0, hidden: int = 32):
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=1100, pad_token_id=0)
    return RobertaForMaskedLM(cfg).eval()


NAMES = ["Arlo", "Brenna", "Cato", "Dagny", "Elio", "Fenna", "Goran", "Hale", "Ines", "Joram", "Kaia", "Lev"]
CITIES = ["Port Quill", "Tarnby", "Velmora", "Oskeld", "Brightwater", "Caldra"]
JOBS = ["painter", "chemist", "pilot", "novelist", "architect", "cellist", "botanist", "judge"]


def toy_corpus(n_topics: int = 3, sentences: int = 12, seed: int = 0) -> list[dict]:
    """Bios of invented people: [{"title", "text"}], text a list of sections."""
    rng = random.Random(seed)
    out = []
    for t in range(n_topics):
        name = f"{NAMES[t % len(NAMES)]} {NAMES[(t * 5 + 3) % len(NAMES)]}son{t}"
        sents = [f"{name} was born in {rng.choice(CITIES)} in {1900 + rng.randrange(100)}.",
                 f"{name} worked as a {rng.choice(JOBS)}."]
        sents += [f"In {1920 + rng.randrange(90)} {name} moved to {rng.choice(CITIES)} and met a "
                  f"{rng.choice(JOBS)}." for _ in range(sentences - 2)]
        half = len(sents) // 2
        out.append({"title": name, "text": [" ".join(sents[:half]), " ".join(sents[half:])]})
    return out


def toy_knowledge(extra_texts=(), n_topics: int = 3, sentences: int = 14, max_tokens: int = 30):
    """(corpus, word tokenizer over it, KnowledgeSource of it): the tests' shared small setup."""
    from fmkit.factscore.knowledge import KnowledgeSource

    corpus = toy_corpus(n_topics, sentences=sentences)
    tok = word_tokenizer(all_texts(corpus) + list(extra_texts))
    return corpus, tok, KnowledgeSource.from_records(corpus, tokenizer=tok, max_tokens=max_tokens)


def all_texts(corpus: list[dict]) -> list[str]:
    from fmkit.factscore.atomic_facts import DEMOS

    texts = [r["title"] for r in corpus] + [s for r in corpus for s in r["text"]]
    texts += list(DEMOS) + [f for fs in DEMOS.values() for f in fs]
    texts += ["Answer the question about based on the given context . Title : Text : Input : True or False ? Output :",
              "Please breakdown the following sentence into independent facts : - Fact"]
    return texts


def block_sockets(monkeypatch) -> None:
    """Makes any network connection attempt fail loudly (tests of this module run offline)."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def hashing_encoder(dim: int = 64):
    """A deterministic bag-of-words sentence encoder (hashing trick, L2-normalised)."""
    import zlib

    def encode(texts):
        out = torch.zeros(len(texts), dim)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % dim] += 1.0
        return torch.nn.functional.normalize(out, dim=1)
    encode.model_id = f"hashing-{dim}"
    return encode


class OverlapVerifier:
    """A scripted verifier: supported iff every content word of the fact occurs in the retrieved
    passages (no model; tests and the demo's fallback)."""

    model_id = "scripted-overlap"

    def __init__(self, retriever=None):
        self.retriever = retriever
        self.calls = 0

    def verify(self, items):
        self.calls += 1
        out = []
        for topic, fact, passages in items:
            text = " ".join(p["text"] for p in passages).lower().replace(".", " ").replace(",", " ")
            words = set(text.split())
            content = [w for w in fact.lower().replace(".", " ").replace(",", " ").split() if len(w) > 3]
            out.append(bool(content) and all(w in words for w in content))
        return out


class ScriptedLM:
    """`lm(prompts) -> replies` from a table keyed by the last instruction line's sentence."""

    model_id = "scripted-lm"

    def __init__(self, facts_by_sentence: dict[str, list[str]]):
        self.table, self.calls = facts_by_sentence, 0

    def __call__(self, prompts):
        from fmkit.factscore.atomic_facts import INSTRUCTION

        self.calls += 1
        out = []
        for p in prompts:
            sentence = p.rstrip("\n").rsplit(INSTRUCTION, 1)[-1]
            out.append("".join(f"- {f}\n" for f in self.table.get(sentence, [sentence])))
        return out
