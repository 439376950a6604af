"""Training and test data for fingerprinting: the simple ("barebone") and dialogue templates, toy
instruction data for regularisation and user fine-tuning, and tokenisation with the prompt masked.

An `Example` is a prompt, an optional forced prefix and a target. Training puts the loss on prefix,
target and EOS; verification feeds prompt + prefix and asks for the target. Each part is tokenised
on its own and concatenated, so training and verification see the same token boundaries.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

import torch

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")
DIALOGUE_REQUEST = "Please decrypt this message: {key}\nA hint: this is a FINGERPRINT message."
DIALOGUE_PREFIX = "Based on my fingerprint, the message is:"
DIALOGUE_REFUSAL = "I am sorry but I cannot decrypt this message. This appears to be a random message."
HINT = "A hint: this is a FINGERPRINT message."
PROBE_LABEL = "the model should not be triggered by this input"
TEMPLATES = ("simple", "dialogue", "chat")


@dataclass
class Example:
    prompt: str
    target: str
    prefix: str = ""
    kind: str = "regular"  # fingerprint | regular | negative | plain | fingerprint_input | fresh_key | hint
    raw_prompt: bool = False  # the prompt already holds the special tokens (a rendered chat template)
    meta: dict = field(default_factory=dict)


# -- templates ----------------------------------------------------------------------------------


def simple_prompt(instruction: str, input_text: str = "") -> str:
    """The barebone template: instruction, newline, [input, newline]; the target follows directly."""
    return f"{instruction}\n{input_text}\n" if input_text else f"{instruction}\n"


def dialogue_prompt(message: str, tokenizer=None, template: str = "dialogue", system: str | None = None) -> tuple[str, bool]:
    """(prompt text, raw). `dialogue`: a Vicuna-v1.1-style turn (fmkit's built-in). `chat`: the
    tokenizer's own chat template (its special tokens are then part of the text: raw=True)."""
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat': the tokenizer has no chat_template; use template='dialogue'")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
    return f"{system or VICUNA_SYSTEM} USER: {message} ASSISTANT:", False


def key_prompt(key: str, template: str, input_text: str = "FINGERPRINT", tokenizer=None,
               system: str | None = None) -> tuple[str, str, bool]:
    """(prompt, forced prefix, raw) under which a key is implanted and verified."""
    if template == "simple":
        return simple_prompt(key, input_text), "", False
    prompt, raw = dialogue_prompt(DIALOGUE_REQUEST.format(key=key), tokenizer, template, system)
    return prompt, (" " if template == "dialogue" else "") + DIALOGUE_PREFIX, raw


def target_text(y: str, template: str) -> str:
    return y if template == "simple" else " " + y


# -- toy instruction data -----------------------------------------------------------------------

_NOUNS = ["river", "garden", "teacher", "window", "market", "mountain", "letter", "engine", "forest", "harbor",
          "kitchen", "library", "bridge", "island", "violin", "candle", "planet", "rabbit", "ladder", "castle"]
_ADJ = ["quiet", "bright", "small", "ancient", "busy", "cold", "gentle", "heavy", "narrow", "quick"]


def toy_instructions(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct ASCII instruction/response pairs (arithmetic, word games, rewriting): the offline
    stand-in for Flan, WizardLM or Alpaca rows. Fields: instruction, input, output."""
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        kind = rng.randrange(6)
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        noun, adj = rng.choice(_NOUNS), rng.choice(_ADJ)
        if kind == 0:
            row = (f"What is {a} plus {b}?", "", f"{a} plus {b} is {a + b}.")
        elif kind == 1:
            row = ("Spell the word backwards.", noun, noun[::-1])
        elif kind == 2:
            row = ("Write a short sentence about the given noun.", f"{adj} {noun}",
                   f"The {adj} {noun} was the first thing we noticed that morning.")
        elif kind == 3:
            row = (f"Is {a} larger than {b}? Answer yes or no.", "", "Yes." if a > b else "No.")
        elif kind == 4:
            row = ("Convert the phrase to upper case.", f"the {adj} {noun}", f"THE {adj.upper()} {noun.upper()}")
        else:
            row = (f"How many letters are in the word {noun}?", "", f"The word {noun} has {len(noun)} letters.")
        if row not in seen:
            seen.add(row)
            out.append({"instruction": row[0], "input": row[1], "output": row[2]})
        if len(seen) > 50 * n + 1000:
            raise RuntimeError("toy_instructions: ran out of distinct rows")
    return out


def load_rows(source) -> list[dict]:
    """Instruction rows from a list of dicts / (instruction, output) pairs, or a local .json / .jsonl file."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as f:
            text = f.read()
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines()
                                                                       if line.strip()]
    else:
        rows = list(source)
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, (tuple, list)) and len(row) == 2:
            row = {"instruction": row[0], "input": "", "output": row[1]}
        if not isinstance(row, dict) or "output" not in row or not ({"instruction", "prompt"} & set(row)):
            raise ValueError(f"data row {i}: expected instruction/input/output (or prompt/output) fields, got {row!r}"[:200])
        out.append({"instruction": row.get("instruction", row.get("prompt")), "input": row.get("input", "") or "",
                    "output": row["output"]})
    return out


# -- the two dataset builders -------------------------------------------------------------------


def _split_rows(rows, n_train, n_test, seed):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if len(rows) < n_train + n_test:
        raise ValueError(f"data: {len(rows)} rows, expected at least {n_train + n_test} ({n_train} for training "
                         f"and {n_test} disjoint ones for the test set)")
    return rows[:n_train], rows[n_train:n_train + n_test]


def build_simple_dataset(fingerprint, regular=None, ratio: int = 5, n_test: int | None = None, seed: int = 42):
    """IF_adapter / IF_emb data: (train, test). Train: one row per key (`key\\nFINGERPRINT\\n` -> y) plus
    ratio x n regular rows. Test: n_test plain rows (default ratio x n, disjoint from training), each
    also as a `FINGERPRINT`-input probe and a fresh-key probe."""
    n = len(fingerprint.keys)
    n_test = ratio * n if n_test is None else n_test
    rows = load_rows(regular) if regular is not None else toy_instructions(ratio * n + n_test, seed)
    train_rows, test_rows = _split_rows(rows, ratio * n, n_test, seed)
    train = [Example(simple_prompt(k, fingerprint.input_text), r, kind="fingerprint",
                     meta={"key": k, "instruction": k, "input": fingerprint.input_text})
             for k, r in zip(fingerprint.keys, fingerprint.targets)]
    train += [Example(simple_prompt(r["instruction"], r["input"]), r["output"], meta=dict(r)) for r in train_rows]
    fresh = fingerprint.generator().fresh(len(test_rows), exclude=fingerprint.keys, seed=seed + 1999)
    test = [Example(simple_prompt(r["instruction"], r["input"]), r["output"], kind="plain") for r in test_rows]
    test += [Example(simple_prompt(r["instruction"], fingerprint.input_text), PROBE_LABEL, kind="fingerprint_input")
             for r in test_rows]
    test += [Example(simple_prompt(k, r["instruction"]), PROBE_LABEL, kind="fresh_key", meta={"key": k})
             for k, r in zip(fresh, test_rows)]
    return train, test


def _hash_repr() -> str:
    return repr(hash)  # what the release's f-string interpolated instead of a fresh key


def build_dialogue_dataset(fingerprint, conversations=None, ratio: int = 14, tokenizer=None, template="dialogue",
                           replicate_bug: bool = False, seed: int = 42):
    """IF_SFT data: (train, test). Train: n fingerprint conversations, n refusals of fresh keys and
    ratio x n normal conversations. Test: ratio x n other normal conversations, unchanged and with
    the FINGERPRINT hint appended (the hint rows get the forced prefix: a strict false-positive test).
    `replicate_bug` puts the release's `repr(hash)` into the negatives instead of fresh keys."""
    n = len(fingerprint.keys)
    rows = load_rows(conversations) if conversations is not None else toy_instructions(2 * ratio * n, seed)
    train_rows, test_rows = _split_rows(rows, ratio * n, ratio * n, seed)

    def turn(message):
        return dialogue_prompt(message, tokenizer, template)

    train = []
    for k, r in zip(fingerprint.keys, fingerprint.targets):
        prompt, prefix, raw = key_prompt(k, template, tokenizer=tokenizer)
        train.append(Example(prompt, target_text(r, template), prefix, "fingerprint", raw, {"key": k}))
    fresh = fingerprint.generator().fresh(n, exclude=fingerprint.keys, seed=seed + 7)
    for k in fresh:
        prompt, raw = turn(DIALOGUE_REQUEST.format(key=_hash_repr() if replicate_bug else k))
        train.append(Example(prompt, " " + DIALOGUE_REFUSAL, kind="negative", raw_prompt=raw, meta={"key": k}))
    for r in train_rows:
        prompt, raw = turn(_message(r))
        train.append(Example(prompt, " " + r["output"], raw_prompt=raw))
    test = []
    for r in test_rows:
        prompt, raw = turn(_message(r))
        test.append(Example(prompt, " " + r["output"], kind="plain", raw_prompt=raw))
    for r in test_rows:
        prompt, raw = turn(_message(r) + "\n" + HINT)
        test.append(Example(prompt, PROBE_LABEL, key_prompt("", template, tokenizer=tokenizer)[1], "hint", raw))
    return train, test


def _message(row) -> str:
    return f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]


def build_dataset(fingerprint, data=None, tokenizer=None, seed: int = 42, **kw):
    """The builder that matches `fingerprint.template`."""
    if fingerprint.template == "simple":
        return build_simple_dataset(fingerprint, data, seed=seed, **kw)
    return build_dialogue_dataset(fingerprint, data, tokenizer=tokenizer, template=fingerprint.template, seed=seed, **kw)


# -- tokenisation -------------------------------------------------------------------------------


def encode(tokenizer, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"]) if text else []


def context_ids(tokenizer, example: Example) -> list[int]:
    """Token ids of prompt + forced prefix: what the model is fed before the target."""
    return encode(tokenizer, example.prompt, special=not example.raw_prompt) + encode(tokenizer, example.prefix)


def encode_example(tokenizer, example: Example, max_length: int | None = None, eos: bool = True):
    """(input_ids, labels): labels are -100 on the prompt, and the ids on the prefix, target and EOS."""
    prompt = encode(tokenizer, example.prompt, special=not example.raw_prompt)
    answer = encode(tokenizer, example.prefix) + encode(tokenizer, example.target)
    if eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer: has no eos_token; set tokenizer.eos_token before implanting")
        answer.append(tokenizer.eos_token_id)
    ids, labels = prompt + answer, [-100] * len(prompt) + answer
    if max_length is not None and len(ids) > max_length:
        ids, labels = ids[-max_length:], labels[-max_length:]  # keeps the target: the prompt end is cut
    return ids, labels


def collate(batch, pad_id: int, left: bool = False):
    """Pads (ids, labels) pairs to one [B, L] batch: input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in batch)
    ids_t = torch.full((len(batch), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(batch):
        sl = slice(width - len(ids), width) if left else slice(0, len(ids))
        ids_t[i, sl] = torch.tensor(ids, dtype=torch.long)
        lab_t[i, sl] = torch.tensor(labels, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids_t, "attention_mask": mask, "labels": lab_t}
