"""Rank classification reuses the LM KV cache of each query's prompt across the class names (as
the reference's get_rank_classifications does): the same log-likelihoods as scoring every
`prompt + class name` from scratch, with the prompt run once per query instead of once per class."""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("PIL")

from fmkit.flamingo import data as fdata  # noqa: E402
from fmkit.flamingo.evaluate import FewShotEvaluator  # noqa: E402
from fmkit.flamingo.model import conditioned  # noqa: E402
from test_flamingo import tiny_flamingo  # noqa: E402
from test_flamingo_eval import _open_gates, evaluator_items  # noqa: E402, F401


def _from_scratch(ev, prompt, paths):
    """log p(class | prompt) for each class, one uncached forward of `prompt + class` each."""
    tok, out = ev.tokenizer, []
    for name in ev.classes:
        prefix = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(name, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix + c])
        with torch.no_grad(), conditioned(ev.model, ev.pixels(paths)[None, :, None]) as lm:
            logp = lm(input_ids=ids).logits.float().log_softmax(-1)[0]
        out.append(sum(logp[len(prefix) + j - 1, t] for j, t in enumerate(c)).item())
    return out


def test_rank_classification_runs_the_prompt_once(evaluator_items):
    model, tok = tiny_flamingo()
    _open_gates(model)
    classes = ["no", "yes", "a red car", "blue"]  # names of 1 to 3 tokens: the batch is right-padded
    ev = FewShotEvaluator(model, tok, fdata.image_transform(16), task="imagenet", demos=evaluator_items[:8],
                          queries=evaluator_items[8:], classes=classes)
    prompts, images = ev.batch_inputs(evaluator_items[8:10], 2, False)
    tokens = []
    hook = model.lang_encoder.register_forward_pre_hook(
        lambda m, a, kw: tokens.append(int(kw["input_ids"].numel())), with_kwargs=True)
    try:
        ll = ev.class_log_likelihoods(prompts, images)
        mean = ev.class_log_likelihoods(prompts, images, normalize_length=True)
    finally:
        hook.remove()
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in classes]
    assert max(lengths) > min(lengths)
    prefix = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    # Per query: the prompt once, then the C names (padded to the longest) in one batch.
    assert tokens == [n for p in prefix for n in (p, len(classes) * max(lengths))] * 2
    for b in range(len(prompts)):
        expected = _from_scratch(ev, prompts[b], images[b])
        assert ll[b].tolist() == pytest.approx(expected, abs=2e-5)
        assert mean[b].tolist() == pytest.approx([e / n for e, n in zip(expected, lengths)], abs=2e-5)
