"""Local data for OpenFlamingo training and evaluation (nothing is downloaded).

Training (spec §2.8):
- `InterleavedStream`: MMC4-style JSONL documents, one per line::

      {"text_list": ["sentence", ...],
       "image_info": [{"image_name": "a.jpg", "matched_text_index": 0, "matched_sim": 0.31}, ...],
       "similarity_matrix": [[sim(image 0, sentence 0), ...], ...]}      (images x sentences, optional)

  Images are assigned to sentences by Hungarian matching on `similarity_matrix` (MMC4's
  bipartite assignment; without it the document's `matched_text_index` is used), pairs below
  `sim_threshold` are dropped, at most `max_images` (6) are kept, and the text becomes
  `<image>sentence ... <|endofchunk|><image>sentence ...<|endofchunk|>{eos}` (the first
  `<|endofchunk|>` and the whitespace around the special tokens removed), truncated and
  right-padded to `max_tokens` (256). Documents left with no image are skipped; documents with
  one image are kept with probability 0.5 (and skipped when that image is the last token).
  Unlike the reference, images are ordered by their sentence, so the k-th `<image>` is the
  k-th image whatever the order of `image_info`.
- `PairStream`: LAION / DataComp WebDataset shards (read with fmkit.datacomp's reader) as
  `<image>caption<|endofchunk|>{eos}`, at most 32 tokens, right-padded to the longest.

Both streams are deterministic functions of (seed, position): every epoch is a seeded
permutation, the 0.5 draw is seeded per (epoch, document), and `state_dict()` /
`load_state_dict()` restore the position, so a resumed run sees exactly the batches an
uninterrupted run would. Under data parallelism rank r takes global batches r, r + W, ...,
so W ranks see the batches one process with W-step gradient accumulation sees.

Evaluation loaders (`load_task`): COCO / Flickr30k Karpathy JSON, VQAv2-style question and
annotation JSON (OK-VQA, TextVQA, VizWiz in the same layout), HatefulMemes JSONL, and image
folders (one sub-folder per class, ImageNet-style).
"""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fmkit.flamingo.model import END_OF_CHUNK_TOKEN, IMAGE_TOKEN

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ---- images ----

def load_image(path, what: str = "image"):
    """PIL RGB image at `path`; a missing file raises FileNotFoundError naming `what`."""
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"{what}: image file not found", str(path))
    with Image.open(path) as img:
        return img.convert("RGB")


def image_transform(size: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """PIL image (or raw bytes) -> float tensor [3, size, size]: bicubic resize to a square, values
    in [0, 1], then (x - mean) / std when given (CLIP's mean/std for open_clip towers; none for
    fmkit.clip towers trained by `fmkit datacomp train`, which see [0, 1] pixels)."""
    from PIL import Image

    m = torch.tensor(mean).view(3, 1, 1) if mean is not None else None
    s = torch.tensor(std).view(3, 1, 1) if std is not None else None

    def transform(img):
        if isinstance(img, (bytes, bytearray)):
            img = Image.open(io.BytesIO(img))
        img = img.convert("RGB").resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        if m is not None:
            x = (x - m) / s
        return x
    transform.size = size
    return transform


# ---- the deterministic, resumable, rank-sharded batch stream ----

class _Stream:
    """Batches of `batch_size` accepted items from a list, epoch after epoch (see module docstring)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int, world_size: int, what: str):
        if n_items == 0:
            raise ValueError(f"{what}: no items")
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("rank", rank, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if rank >= world_size:
            raise ValueError(f"rank: {rank} is not below world_size {world_size}")
        self.n, self.batch_size, self.seed, self.rank, self.world = n_items, batch_size, seed, rank, world_size
        self.what = what
        self.epoch, self.cursor, self.batches = 0, 0, 0
        self._order = None

    def _permutation(self):
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(self.n))
        return self._order[1]

    def _next_indices(self):
        """The item indices of the next global batch (accepted items only)."""
        out, rejected = [], 0
        while len(out) < self.batch_size:
            if self.cursor >= self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
            index = int(self._permutation()[self.cursor])
            self.cursor += 1
            if self.accept(index, random.Random(f"{self.seed}/{self.epoch}/{index}")):
                out.append(index)
                rejected = 0
            else:
                rejected += 1
                if rejected > 2 * self.n:  # two whole epochs without one accepted item
                    raise ValueError(f"{self.what}: no item passes the filters (every document was skipped)")
        return out

    def next(self):
        """This rank's next batch: global batches rank, rank + W, ... (the others are skipped unloaded)."""
        while True:
            indices = self._next_indices()
            mine = self.batches % self.world == self.rank
            self.batches += 1
            if mine:
                return self.collate(indices)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.batches = state["epoch"], state["cursor"], state["batches"]

    def accept(self, index: int, rng: random.Random) -> bool:
        return True

    def collate(self, indices):
        raise NotImplementedError


def _special_ids(tokenizer):
    ids = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN, END_OF_CHUNK_TOKEN])
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError("tokenizer: has no <image> / <|endofchunk|> tokens; build the model with create_flamingo "
                         "first (it adds them)")
    if tokenizer.eos_token is None:
        raise ValueError("tokenizer: expected an eos_token (the training text ends with it)")
    return ids


# ---- MMC4-style interleaved documents ----

def read_jsonl(path, what: str) -> list[tuple[dict, str]]:
    """[(record, 'FILE line N', folder of FILE), ...] of a .jsonl file, or of every .jsonl file in a folder (sorted)."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{what}: no .jsonl files in {str(path)!r}")
    out = []
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(2, f"{what}: no such file", str(f))
        with open(f, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{f} line {line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{what}: {where} is not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{what}: {where}: expected a JSON object, got {type(record).__name__}")
                out.append((record, where, f.parent))
    return out


def assign_images(doc: dict, where: str, sim_threshold: float) -> list[tuple[int, int]]:
    """[(image index, sentence index), ...] sorted by sentence: Hungarian matching on the
    document's image x sentence similarities (or its matched_text_index), pairs >= threshold."""
    info = doc["image_info"]
    n_sent = len(doc["text_list"])
    sim = doc.get("similarity_matrix")
    pairs = []
    if sim is not None:
        sim = np.asarray(sim, dtype=np.float64)
        if sim.ndim != 2 or sim.shape != (len(info), n_sent):
            raise ValueError(f"mmc4: {where}: similarity_matrix has shape {list(sim.shape)}, expected "
                             f"[{len(info)} images, {n_sent} sentences]")
        if len(info):
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(sim, maximize=True)
            pairs = [(int(i), int(j), float(sim[i, j])) for i, j in zip(rows, cols)]
    else:
        used = set()
        for i, image in enumerate(info):
            j = image.get("matched_text_index")
            if not isinstance(j, int) or not 0 <= j < n_sent:
                raise ValueError(f"mmc4: {where}: image_info[{i}] has matched_text_index {j!r}, expected an index "
                                 f"into the {n_sent} sentences (or give a similarity_matrix)")
            if j not in used:  # one image per sentence, the first one
                used.add(j)
                pairs.append((i, j, float(image.get("matched_sim", float("inf")))))
    return sorted(((i, j) for i, j, s in pairs if s >= sim_threshold), key=lambda p: p[1])


class InterleavedStream(_Stream):
    """MMC4-style batches: (vision_x [B, max_images, 1, 3, S, S], input_ids [B, max_tokens],
    attention_mask [B, max_tokens]); see the module docstring for the format and the rules."""

    def __init__(self, path, tokenizer, image_processor: Callable, batch_size: int, *, max_images: int = 6,
                 min_images: int = 1, max_tokens: int = 256, sim_threshold: float = 0.24, image_dir=None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, single_image_keep: float = 0.5):
        self.docs = read_jsonl(path, "mmc4")
        super().__init__(len(self.docs), batch_size, seed, rank, world_size, "mmc4")
        self.tokenizer, self.processor = tokenizer, image_processor
        self.max_images, self.min_images, self.max_tokens = max_images, min_images, max_tokens
        self.sim_threshold, self.image_dir, self.single_image_keep = sim_threshold, image_dir, single_image_keep
        self.image_id, self.eoc_id = _special_ids(tokenizer)
        self._prepared: dict[int, Any] = {}

    def prepare(self, index: int):
        """(image paths, input_ids, attention_mask) of document `index`, or None when it has no
        image (computed once: tokenising does not depend on the epoch)."""
        if index not in self._prepared:
            self._prepared[index] = self._prepare(index)
        return self._prepared[index]

    def _prepare(self, index: int):
        doc, where, folder = self.docs[index]
        for key, kind in (("text_list", list), ("image_info", list)):
            if not isinstance(doc.get(key), kind):
                raise ValueError(f"mmc4: {where}: expected a list {key!r}, got {type(doc.get(key)).__name__}")
        pairs = assign_images(doc, where, self.sim_threshold)[: self.max_images]
        if not pairs:
            return None
        sentences = [str(s) for s in doc["text_list"]]
        for i, j in pairs:
            sentences[j] = f"{END_OF_CHUNK_TOKEN}{IMAGE_TOKEN}{sentences[j]}"
        text = " ".join(sentences).replace(END_OF_CHUNK_TOKEN, "", 1)
        text = text.replace(f" {END_OF_CHUNK_TOKEN}", END_OF_CHUNK_TOKEN).replace(f"{IMAGE_TOKEN} ", IMAGE_TOKEN)
        text = text.replace(f" {IMAGE_TOKEN}", IMAGE_TOKEN)
        text = f"{text}{END_OF_CHUNK_TOKEN}{self.tokenizer.eos_token}"
        if text.count(IMAGE_TOKEN) != len(pairs):
            raise ValueError(f"mmc4: {where}: the text has {text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} tokens but "
                             f"{len(pairs)} images were assigned (a sentence contains a literal {IMAGE_TOKEN})")
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(text, max_length=self.max_tokens, truncation=True, padding="max_length",
                             return_tensors="pt")
        ids = enc["input_ids"][0]
        names = []
        for i, _ in pairs:
            name = doc["image_info"][i].get("image_name")
            if not isinstance(name, str):
                raise ValueError(f"mmc4: {where}: image_info[{i}] has no image_name")
            names.append(os.path.join(self.image_dir or folder, name))
        return names, ids, enc["attention_mask"][0]

    def accept(self, index, rng):
        prepared = self.prepare(index)
        if prepared is None:
            return False
        _, ids, _ = prepared
        n_images = int((ids == self.image_id).sum())  # after truncation
        if n_images < self.min_images:
            return False
        if n_images == 1:
            if rng.random() >= self.single_image_keep:
                return False
            if ids[ids != self.tokenizer.pad_token_id][-1] == self.image_id:
                return False  # the only image is the last token: every label would be masked
        return True

    def collate(self, indices):
        size = self.processor.size
        vision_x = torch.zeros(len(indices), self.max_images, 1, 3, size, size)
        for b, index in enumerate(indices):
            names, ids, _ = self._prepared[index]
            n_images = int((ids == self.image_id).sum())
            for t, name in enumerate(names[:n_images]):
                vision_x[b, t, 0] = self.processor(load_image(name, f"mmc4: {self.docs[index][1]}"))
        ids = torch.stack([self._prepared[i][1] for i in indices])
        mask = torch.stack([self._prepared[i][2] for i in indices])
        return vision_x, ids, mask


# ---- LAION / DataComp pairs ----

def read_pairs(path) -> list[tuple[bytes, str, str]]:
    """[(image bytes, caption, 'SHARD key'), ...] of a WebDataset .tar shard or a folder of them."""
    from fmkit.datacomp.pool import read_tar_shard

    path = Path(path)
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise ValueError(f"laion: no .tar shards in {str(path)!r}")
    out = []
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(2, "laion: no such shard", str(shard))
        for sample in read_tar_shard(shard):
            image = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if k in sample), None)
            if image is None or "txt" not in sample:
                raise ValueError(f"laion: {shard} sample {sample['key']!r} lacks an image or a .txt caption")
            out.append((image, sample["txt"], f"{shard} {sample['key']}"))
    return out


class PairStream(_Stream):
    """LAION-style batches: (vision_x [B, 1, 1, 3, S, S], input_ids [B, T <= 32], attention_mask)."""

    def __init__(self, path, tokenizer, image_processor: Callable, batch_size: int, *, max_tokens: int = 32,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.pairs = read_pairs(path)
        super().__init__(len(self.pairs), batch_size, seed, rank, world_size, "laion")
        self.tokenizer, self.processor, self.max_tokens = tokenizer, image_processor, max_tokens
        _special_ids(tokenizer)

    def collate(self, indices):
        images = torch.stack([self.processor(self.pairs[i][0]) for i in indices])[:, None, None]
        texts = [f"{IMAGE_TOKEN}{self.pairs[i][1].strip()}{END_OF_CHUNK_TOKEN}{self.tokenizer.eos_token}"
                 for i in indices]
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(texts, max_length=self.max_tokens, truncation=True, padding="longest",
                             return_tensors="pt")
        return images, enc["input_ids"], enc["attention_mask"]


# ---- evaluation data sets ----

CAPTIONING, VQA, CLASSIFICATION = "captioning", "vqa", "classification"
TASKS = {"coco": CAPTIONING, "flickr": CAPTIONING, "vqav2": VQA, "okvqa": VQA, "textvqa": VQA, "vizwiz": VQA,
         "hatefulmemes": CLASSIFICATION, "imagenet": CLASSIFICATION}


def task_kind(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task]


def _read_json(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(2, f"{what}: no such file", str(path))
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: {path} is not valid JSON ({exc.msg})") from None


def load_karpathy(path, image_dir, splits: Sequence[str] = ("test",)) -> list[dict]:
    """Items {id, image, caption (the first), references (all)} of a COCO / Flickr30k Karpathy
    JSON ({"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}], ...}]})."""
    data = _read_json(path, "karpathy")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"karpathy: {path}: expected {{'images': [...]}} (Karpathy split JSON)")
    out = []
    for n, record in enumerate(data["images"]):
        if record.get("split") not in splits:
            continue
        sentences = [s["raw"] if isinstance(s, dict) else str(s) for s in record.get("sentences", [])]
        if not sentences or "filename" not in record:
            raise ValueError(f"karpathy: {path} images[{n}]: expected 'filename' and non-empty 'sentences'")
        image = os.path.join(image_dir, record.get("filepath", ""), record["filename"])
        out.append({"id": record.get("cocoid", record.get("imgid", n)), "image": image,
                    "caption": sentences[0].strip(), "references": [s.strip() for s in sentences]})
    return out


def _vqa_image_path(image_dir, question, where):
    if isinstance(question.get("image"), str):
        return os.path.join(image_dir, question["image"])
    image_id = question.get("image_id")
    names = [f"{image_id}", f"{image_id}.jpg", f"{image_id}.png"]
    if isinstance(image_id, int):
        names += [f"COCO_{split}2014_{image_id:012d}.jpg" for split in ("val", "train")]
    for name in names:
        if os.path.isfile(os.path.join(image_dir, name)):
            return os.path.join(image_dir, name)
    raise FileNotFoundError(2, f"vqa: {where}: image file not found (tried {', '.join(names)})",
                            os.path.join(image_dir, names[1]))


def load_vqa(questions_path, annotations_path, image_dir) -> list[dict]:
    """Items {id, image, question, answers (the 10 human answers)} from VQAv2-style
    {"questions": [{question_id, image_id, question}]} and {"annotations": [{question_id, answers:
    [{answer}]}]} files. Images: the question's "image" file name, else image_id as a file name,
    `{image_id}.jpg`/`.png`, or COCO's `COCO_val2014_{image_id:012d}.jpg` (and train2014)."""
    questions = _read_json(questions_path, "vqa questions")
    annotations = _read_json(annotations_path, "vqa annotations")
    if not isinstance(questions, dict) or not isinstance(questions.get("questions"), list):
        raise ValueError(f"vqa: {questions_path}: expected {{'questions': [...]}}")
    if not isinstance(annotations, dict) or not isinstance(annotations.get("annotations"), list):
        raise ValueError(f"vqa: {annotations_path}: expected {{'annotations': [...]}}")
    answers = {a["question_id"]: [x["answer"] if isinstance(x, dict) else str(x) for x in a["answers"]]
               for a in annotations["annotations"]}
    out = []
    for n, q in enumerate(questions["questions"]):
        qid = q.get("question_id")
        if qid not in answers:
            raise ValueError(f"vqa: {questions_path} questions[{n}]: question_id {qid!r} has no annotation in "
                             f"{annotations_path}")
        out.append({"id": qid, "image": _vqa_image_path(image_dir, q, f"question {qid}"),
                    "question": str(q["question"]).strip(), "answers": answers[qid]})
    return out


def load_hateful_memes(path, image_dir) -> list[dict]:
    """Items {id, image, text, label (0/1)} of a HatefulMemes JSONL ({"id", "img", "label", "text"})."""
    out = []
    for record, where, _ in read_jsonl(path, "hatefulmemes"):
        for key in ("img", "text", "label"):
            if key not in record:
                raise ValueError(f"hatefulmemes: {where}: missing {key!r}")
        out.append({"id": record.get("id", len(out)), "image": os.path.join(image_dir, record["img"]),
                    "text": str(record["text"]).strip(), "label": int(record["label"])})
    return out


def load_image_folder(root) -> tuple[list[dict], list[str]]:
    """(items {id, image, label, class_name}, class names) of ROOT/<class>/<image> (sorted classes)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(2, "image folder: no such folder", str(root))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder: {str(root)!r} has no class sub-folders")
    items = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append({"id": f"{name}/{f.name}", "image": str(f), "label": label,
                              "class_name": name.replace("_", " ")})
    return items, [c.replace("_", " ") for c in classes]


def load_task(task: str, data_dir) -> dict:
    """{"demos": items, "queries": items, "classes": names or None} of `task` from a folder:

    - coco, flickr: `karpathy.json` (demos: train + restval, queries: test), images under the folder;
    - vqav2, okvqa, textvqa, vizwiz: `{train,test}_questions.json`, `{train,test}_annotations.json`,
      images in `images/`;
    - hatefulmemes: `train.jsonl`, `test.jsonl` (img paths relative to the folder);
    - imagenet: `train/<class>/*`, `val/<class>/*`.
    """
    kind = task_kind(task)
    d = Path(data_dir)
    if kind == CAPTIONING:
        path = d / "karpathy.json"
        return {"demos": load_karpathy(path, d, ("train", "restval")), "queries": load_karpathy(path, d, ("test",)),
                "classes": None}
    if kind == VQA:
        return {split: load_vqa(d / f"{name}_questions.json", d / f"{name}_annotations.json", d / "images")
                for split, name in (("demos", "train"), ("queries", "test"))} | {"classes": None}
    if task == "hatefulmemes":
        return {"demos": load_hateful_memes(d / "train.jsonl", d), "queries": load_hateful_memes(d / "test.jsonl", d),
                "classes": ["no", "yes"]}
    demos, classes = load_image_folder(d / "train")
    queries, val_classes = load_image_folder(d / "val")
    if val_classes != classes:
        raise ValueError(f"imagenet: {d / 'val'} has classes {val_classes[:3]}..., {d / 'train'} has {classes[:3]}...")
    return {"demos": demos, "queries": queries, "classes": classes}
