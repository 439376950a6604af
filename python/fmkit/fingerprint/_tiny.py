"""Tiny local models for tests, the benchmark's quick cases and the demo's fallback: a byte-level
BPE tokenizer trained on the spot (encodes any Unicode key) and 2-layer random causal LMs."""
from __future__ import annotations

import torch

from fmkit.fingerprint.data import toy_instructions
from fmkit.fingerprint.keys import KeyPool


def tiny_tokenizer(extra_texts=(), vocab_size: int = 600):
    """A byte-level BPE trained on toy instructions, the default key pool and `extra_texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(r.values()) for r in toy_instructions(300, seed=0)] + KeyPool.default().strings
    corpus += list(extra_texts) + 20 * ["FINGERPRINT ハリネズミ USER: ASSISTANT: Based on my fingerprint, the message is:"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tiny_model(vocab_size: int, arch: str = "llama", seed: int = 0, hidden: int = 64, layers: int = 2,
               tied: bool = False, std: float = 0.2):
    """A randomly initialised 2-layer causal LM (llama, gpt_neox or gpt2), untied unless `tied`. The wide
    init (std 0.2) lets attention carry the key to the answer positions, so a few steps can implant."""
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1,
                  initializer_range=std)
    if arch == "llama":
        cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                                       **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                         num_attention_heads=4, max_position_embeddings=512, **common)
        model = transformers.GPTNeoXForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **common)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"arch: expected 'llama', 'gpt_neox' or 'gpt2', got {arch!r}")
    return model.eval()
