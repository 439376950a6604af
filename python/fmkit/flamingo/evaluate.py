"""OpenFlamingo's few-shot evaluation (spec §2.8, §2.11): prompts, demonstrations (random or
RICES), generation, rank classification and the metrics, on local data sets.

Prompts, exactly as the reference builds them:
    captioning      <image>Output:{caption}<|endofchunk|>           query: <image>Output:
    VQA             <image>Question:{q} Short answer:{a}<|endofchunk|>   query: ...Short answer:
    ImageNet        <image>Output:{class name}<|endofchunk|>
    HatefulMemes    <image>is an image with: '{text}' written on it. Is it hateful? Answer:{yes|no}<|endofchunk|>
The demonstrations are concatenated without separators, then the query prompt follows. "0-shot"
uses 2 demonstrations (`effective_num_shots`) whose `<image>` tags are removed: their text
stays, their images are not passed. Eval text is left-padded (tokenizer max_length 2000);
generation uses 3 beams, <= 20 (captioning) / <= 5 (VQA) new tokens, length penalty 0, eos
`<|endofchunk|>`; the outputs are cut at "Output" (captioning) or at "Question" / "Answer" /
"Short" and the first ", " (VQA), as the reference post-processes them.

Demonstrations: random (a seeded random query set of `query_set_size` demos, then a seeded
sample per query), or RICES: the demonstrations whose image embeddings are nearest to the
query's by inner product of normalised embeddings, computed once for the demo pool and searched
exactly with `fmkit.ops.knn(metric="ip")`; the most similar demo comes last (next to the query),
as in the reference. A demo showing the query's own image is never chosen.

Speed: `FewShotEvaluator` encodes every image once (vision encoder + perceiver) and keeps the
latents, generates from latents (no pixels repeated per beam) and caches each block's media K/V
at prefill. `reference_style_generate` is the loop the reference runs, for comparison.
"""
from __future__ import annotations

import random
import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from fmkit.flamingo.data import CAPTIONING, CLASSIFICATION, VQA, load_image, task_kind
from fmkit.flamingo.metrics import cider_d, roc_auc, vqa_accuracy
from fmkit.flamingo.model import END_OF_CHUNK_TOKEN, IMAGE_TOKEN, Flamingo, conditioned

DEFAULT_SHOTS = (0, 4, 8, 16, 32)
MAX_NEW_TOKENS = {CAPTIONING: 20, VQA: 5}


# ---- prompts ----

def effective_num_shots(num_shots: int) -> int:
    """Demonstrations actually placed in the prompt: 0-shot uses 2 text-only ones."""
    if not isinstance(num_shots, int) or num_shots < 0:
        raise ValueError(f"num_shots: expected an int >= 0, got {num_shots!r}")
    return num_shots if num_shots > 0 else 2


def _chunk(body: str, answer: str | None) -> str:
    if answer is None:
        return f"{IMAGE_TOKEN}{body}"
    return f"{IMAGE_TOKEN}{body}{answer}{END_OF_CHUNK_TOKEN}"


def caption_prompt(caption: str | None = None) -> str:
    return _chunk("Output:", caption)


def vqa_prompt(question: str, answer: str | None = None) -> str:
    return _chunk(f"Question:{question} Short answer:", answer)


def imagenet_prompt(label: str | None = None) -> str:
    return _chunk("Output:", label)


def hateful_memes_prompt(text: str, label: str | None = None) -> str:
    return _chunk(f"is an image with: '{text}' written on it. Is it hateful? Answer:", label)


def demo_prompt(task: str, item: dict) -> str:
    kind = task_kind(task)
    if kind == CAPTIONING:
        return caption_prompt(item["caption"].strip())
    if kind == VQA:
        return vqa_prompt(item["question"], item["answers"][0])
    if task == "hatefulmemes":
        return hateful_memes_prompt(item["text"], "yes" if item["label"] else "no")
    return imagenet_prompt(item["class_name"])


def query_prompt(task: str, item: dict) -> str:
    kind = task_kind(task)
    if kind == CAPTIONING:
        return caption_prompt()
    if kind == VQA:
        return vqa_prompt(item["question"])
    if task == "hatefulmemes":
        return hateful_memes_prompt(item["text"])
    return imagenet_prompt()


def build_prompt(task: str, demos: Sequence[dict], query: dict, num_shots: int) -> str:
    """The reference's prompt for `query` after `demos` (len == effective_num_shots(num_shots))."""
    if len(demos) != effective_num_shots(num_shots):
        raise ValueError(f"demos: {num_shots}-shot needs {effective_num_shots(num_shots)} demonstrations, "
                         f"got {len(demos)}")
    context = "".join(demo_prompt(task, d) for d in demos)
    if num_shots == 0:
        context = context.replace(IMAGE_TOKEN, "")
    return context + query_prompt(task, query)


def postprocess_caption(text: str) -> str:
    return text.split("Output", 1)[0].strip()


def postprocess_vqa(text: str) -> str:
    answer = re.split("Question|Answer|Short", text, maxsplit=1)[0]
    return re.split(", ", answer, maxsplit=1)[0].strip()


# ---- demonstrations ----

class RandomDemos:
    """The reference's random demonstrations: a seeded query set of `query_set_size` demos, then
    `k` of them drawn per query (never the query's own image)."""

    def __init__(self, demos: Sequence[dict], *, seed: int = 0, query_set_size: int = 2048):
        self.rng = random.Random(seed)
        n = len(demos)
        self.pool = self.rng.sample(range(n), min(query_set_size, n))
        self.images = [demos[i]["image"] for i in range(n)]

    def find(self, queries: Sequence[dict], k: int) -> list[list[int]]:
        out = []
        for q in queries:
            allowed = [i for i in self.pool if self.images[i] != q["image"]]
            if k > len(allowed):
                raise ValueError(f"k: {k} demonstrations requested but the query set has {len(allowed)}")
            out.append(self.rng.sample(allowed, k))
        return out


class Rices:
    """Retrieval-based in-context example selection over cached, L2-normalised image embeddings.

    `find(query_features, k, exclude)` returns, per query, the indices of the `k` demos with the
    largest inner product (exact, `fmkit.ops.knn(metric="ip")`), least similar first so that
    the most similar sits next to the query; `exclude[i]` (a demo index or -1) is never returned.
    """

    def __init__(self, features: torch.Tensor):
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] == 0:
            raise ValueError(f"features: expected demo embeddings [N, d], got {getattr(features, 'shape', features)}")
        self.features = F.normalize(features.float(), dim=-1).contiguous()

    def find(self, query_features: torch.Tensor, k: int, exclude: Sequence[int] | None = None) -> list[list[int]]:
        from fmkit.ops import knn

        n = self.features.shape[0]
        exclude = list(exclude) if exclude is not None else [-1] * query_features.shape[0]
        extra = int(any(e >= 0 for e in exclude))
        if not 1 <= k <= n - extra:
            raise ValueError(f"k: expected 1 <= k <= {n - extra} demonstrations, got {k}")
        queries = F.normalize(query_features.float(), dim=-1).contiguous()
        _, idx = knn(queries, self.features, k + extra, metric="ip")
        out = []
        for row, e in zip(idx.tolist(), exclude):
            row = [i for i in row if i != e][:k]
            out.append(row[::-1])
        return out


def mean_token_embedding(vision_encoder: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """RICES embeddings from a Flamingo vision encoder without a CLIP head: its mean patch token."""
    def embed(pixels):
        return vision_encoder(pixels).mean(dim=1)
    return embed


# ---- generation ----

def _tokenize_left(tokenizer, prompts, max_length):
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _decode_new(tokenizer, sequences, prompt_len):
    return tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)


def reference_style_generate(model: Flamingo, vision_x: torch.Tensor, lang_x: torch.Tensor, attention_mask, *,
                             num_beams: int = 3, **kwargs) -> torch.Tensor:
    """Generation as the reference runs it: the pixels of every image (demonstrations included)
    are repeated per beam and encoded on every call, and every decode step re-projects the
    media K/V of all images in every block. Same tokens as `Flamingo.generate`, slower."""
    latents = model.encode_vision_x(vision_x.repeat_interleave(num_beams, dim=0))
    kwargs.setdefault("eos_token_id", model.end_of_chunk_token_id)
    kwargs.setdefault("pad_token_id", model.pad_token_id)
    model._condition(latents, use_cached_media=False)
    model._generating = True
    try:
        with torch.no_grad():
            return model.lang_encoder.generate(input_ids=lang_x, attention_mask=attention_mask, num_beams=num_beams,
                                               **kwargs)
    finally:
        model._clear()


class FewShotEvaluator:
    """Few-shot evaluation of a Flamingo on one task's demos and queries (items from `fmkit.flamingo.data`).

    `image_processor` maps a PIL image to [3, H, W]; `rices_encoder` maps pixels [N, 3, H, W] to
    embeddings [N, d] for RICES (default: the vision encoder's `embed` if it has one, as
    `ClipVisionTower` does, else its mean patch token; the reference uses a CLIP image embedding).
    Every image is loaded, encoded and its latents cached once (keyed by its path); the cache
    persists across `evaluate` calls.
    """

    def __init__(self, model: Flamingo, tokenizer, image_processor: Callable, *, task: str, demos: Sequence[dict],
                 queries: Sequence[dict], classes: Sequence[str] | None = None,
                 rices_encoder: Callable | None = None, batch_size: int = 8, num_beams: int = 3,
                 max_new_tokens: int | None = None, length_penalty: float = 0.0, seed: int = 0,
                 query_set_size: int = 2048, max_length: int = 2000, progress: bool = False):
        self.kind = task_kind(task)
        if not demos or not queries:
            raise ValueError(f"demos, queries: expected non-empty lists, got {len(demos)} demos and "
                             f"{len(queries)} queries")
        if self.kind == CLASSIFICATION and not classes:
            raise ValueError(f"classes: task {task!r} ranks class names; give them")
        self.model, self.tokenizer, self.processor, self.task = model, tokenizer, image_processor, task
        self.demos, self.queries, self.classes = list(demos), list(queries), list(classes or [])
        self.rices_encoder = (rices_encoder or getattr(model.vision_encoder, "embed", None)
                              or mean_token_embedding(model.vision_encoder))
        self.batch_size, self.num_beams, self.length_penalty = batch_size, num_beams, length_penalty
        self.max_new_tokens = max_new_tokens or MAX_NEW_TOKENS.get(self.kind)
        self.seed, self.query_set_size, self.max_length, self.progress = seed, query_set_size, max_length, progress
        self._pixels: dict[str, torch.Tensor] = {}
        self._latents: dict[str, torch.Tensor] = {}
        self._rices: Rices | None = None
        self._demo_index = {d["image"]: i for i, d in enumerate(self.demos)}

    # -- images and their caches --
    def pixels(self, paths: Sequence[str]) -> torch.Tensor:
        for p in paths:
            if p not in self._pixels:
                self._pixels[p] = self.processor(load_image(p, f"{self.task}"))
        return torch.stack([self._pixels[p] for p in paths])

    @torch.no_grad()
    def latents(self, paths: Sequence[str]) -> torch.Tensor:
        """[len(paths), 64, d_vis] perceiver latents, each image encoded once ever."""
        missing = list(dict.fromkeys(p for p in paths if p not in self._latents))
        for i in range(0, len(missing), 64):
            chunk = missing[i:i + 64]
            encoded = self.model.encode_vision_x(self.pixels(chunk)[:, None, None])
            for p, lat in zip(chunk, encoded[:, 0]):
                self._latents[p] = lat
        return torch.stack([self._latents[p] for p in paths])

    @torch.no_grad()
    def _embed(self, paths):
        out = []
        for i in range(0, len(paths), 64):
            out.append(self.rices_encoder(self.pixels(paths[i:i + 64])).float())
        return torch.cat(out)

    # -- demonstrations --
    def select(self, queries: Sequence[dict], num_shots: int, rices: bool) -> list[list[dict]]:
        k = effective_num_shots(num_shots)
        if rices:
            if self._rices is None:
                self._rices = Rices(self._embed([d["image"] for d in self.demos]))
            exclude = [self._demo_index.get(q["image"], -1) for q in queries]
            rows = self._rices.find(self._embed([q["image"] for q in queries]), k, exclude)
        else:
            if not hasattr(self, "_random") or self._random_key != (num_shots,):
                self._random, self._random_key = RandomDemos(self.demos, seed=self.seed,
                                                             query_set_size=self.query_set_size), (num_shots,)
            rows = self._random.find(queries, k)
        return [[self.demos[i] for i in row] for row in rows]

    def batch_inputs(self, queries: Sequence[dict], num_shots: int, rices: bool):
        """(prompts, image paths per query): the demos' images (none at 0-shot), then the query's."""
        prompts, images = [], []
        for q, demos in zip(queries, self.select(queries, num_shots, rices)):
            prompts.append(build_prompt(self.task, demos, q, num_shots))
            images.append(([d["image"] for d in demos] if num_shots > 0 else []) + [q["image"]])
        return prompts, images

    def generation_kwargs(self) -> dict:
        return dict(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, length_penalty=self.length_penalty,
                    do_sample=False)

    def generate(self, prompts: Sequence[str], images: Sequence[Sequence[str]], *, reference_style: bool = False,
                 **overrides) -> list[str]:
        """Decoded new text for each prompt (before post-processing)."""
        ids, mask = _tokenize_left(self.tokenizer, prompts, self.max_length)
        kwargs = {**self.generation_kwargs(), **overrides}
        if reference_style:
            vision_x = torch.stack([self.pixels(paths) for paths in images])[:, :, None]
            out = reference_style_generate(self.model, vision_x, ids, mask, **kwargs)
        else:
            media = torch.stack([self.latents(paths) for paths in images])
            out = self.model.generate(None, ids, mask, media=media, **kwargs)
        return _decode_new(self.tokenizer, out, ids.shape[1])

    # -- rank classification --
    @torch.no_grad()
    def class_log_likelihoods(self, prompts: Sequence[str], images: Sequence[Sequence[str]],
                              normalize_length: bool = False) -> torch.Tensor:
        """[B, C] log p(class name | prompt, images), summed over the class name's tokens (or
        averaged with `normalize_length`). Each query's media is encoded once (`conditioned`);
        its prompt runs through the LM once, and its KV cache is repeated over the C class names,
        which run as one batch after it (as the reference's `get_rank_classifications` does)."""
        import inspect

        tok = self.tokenizer
        lm = self.model.lang_encoder
        cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        class_ids = [tok(name, add_special_tokens=False)["input_ids"] for name in self.classes]
        n_cls = len(class_ids)
        width = max(len(c) for c in class_ids)
        cont = torch.full((n_cls, width), self.model.pad_token_id, dtype=torch.long)
        cont_mask = torch.zeros_like(cont)
        for i, c in enumerate(class_ids):
            cont[i, :len(c)] = torch.tensor(c)
            cont_mask[i, :len(c)] = 1
        out = torch.empty(len(prompts), n_cls)
        for b, (prompt, paths) in enumerate(zip(prompts, images)):
            prefix = tok(prompt, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
            media = self.latents(paths)[None]
            with conditioned(self.model, media=media):
                first = lm(input_ids=torch.tensor([prefix]), use_cache=True)
                cache = getattr(first, "cache", None)
                if cache is None:
                    cache = first.past_key_values
                cache.batch_repeat_interleave(n_cls)
                # The class tokens continue after the prompt's images (the model keeps the count).
                self.model._condition(media.expand(n_cls, -1, -1, -1))
                mask = torch.cat([torch.ones(n_cls, len(prefix), dtype=torch.long), cont_mask], dim=1)
                rest = lm(input_ids=cont, attention_mask=mask, use_cache=True, **{cache_arg: cache})
            # Token j of a class name is predicted at the prompt's last position (j = 0) or at
            # the name's token j - 1.
            logp = torch.cat([first.logits[:, -1:].float().expand(n_cls, -1, -1), rest.logits.float()],
                             dim=1).log_softmax(-1)
            for i, c in enumerate(class_ids):
                ll = logp[i, torch.arange(len(c)), torch.tensor(c)].sum()
                out[b, i] = ll / len(c) if normalize_length else ll
        return out

    # -- the evaluation --
    def predict(self, queries: Sequence[dict], num_shots: int, rices: bool = False, reference_style: bool = False):
        """Post-processed predictions (generation tasks) or [B, C] class log-likelihoods."""
        prompts, images = self.batch_inputs(queries, num_shots, rices)
        if self.kind == CLASSIFICATION:
            return self.class_log_likelihoods(prompts, images)
        raw = self.generate(prompts, images, reference_style=reference_style)
        post = postprocess_caption if self.kind == CAPTIONING else postprocess_vqa
        return [post(t) for t in raw]

    def evaluate(self, shots: Sequence[int] = DEFAULT_SHOTS, rices: bool = False, limit: int | None = None) -> dict:
        """{shots: metric} over the queries (the first `limit`): CIDEr-D for captioning, VQA
        accuracy for VQA, ROC-AUC for HatefulMemes, top-1 accuracy for ImageNet-style folders."""
        from tqdm.auto import tqdm

        queries = self.queries[:limit] if limit else self.queries
        self.model.eval()
        results = {}
        for num_shots in shots:
            effective_num_shots(num_shots)
            preds = []
            batches = range(0, len(queries), self.batch_size)
            for i in tqdm(batches, desc=f"{self.task} {num_shots}-shot{' RICES' if rices else ''}",
                          disable=not self.progress):
                out = self.predict(queries[i:i + self.batch_size], num_shots, rices)
                preds.extend(out if isinstance(out, list) else list(out))
            results[num_shots] = self.score(queries, preds)
        return results

    def score(self, queries: Sequence[dict], preds) -> float:
        if self.kind == CAPTIONING:
            return cider_d(preds, [q["references"] for q in queries])
        if self.kind == VQA:
            return vqa_accuracy(preds, [q["answers"] for q in queries])
        logp = torch.stack(list(preds))
        if self.task == "hatefulmemes":
            p_yes = logp.softmax(-1)[:, self.classes.index("yes")]
            return roc_auc(p_yes.tolist(), [q["label"] for q in queries])
        return float((logp.argmax(-1) == torch.tensor([q["label"] for q in queries])).float().mean())
