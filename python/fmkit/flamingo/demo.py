"""`fmkit demo flamingo`: OpenFlamingo's recipe and few-shot evaluation end to end, offline, on the CPU.

1. Generated data: 32x32 images of a coloured shape (6 shapes x 4 colours, black or white
   background, jittered size and position) whose captions identify them ("a red circle").
   Written in the reference formats: MMC4-style JSONL documents (2-3 images each, sentences
   "Output:a red circle" or "Question:what colour is it? Short answer:red", a similarity
   matrix), a LAION-style WebDataset shard, and held-out evaluation sets as a Karpathy JSON
   (captioning) and VQAv2 question/annotation JSON.
2. A tiny fmkit.clip CLIP trained contrastively on the pairs (`train_clip`): the vision tower.
3. A tiny GPT-2 trained on the documents' text alone: the frozen LM (Flamingo needs a
   pretrained LM; this one knows the formats and the word statistics, not the images).
4. Flamingo (`create_flamingo`) trained with `train_flamingo` on both streams.
5. Few-shot evaluation (`FewShotEvaluator`): 0/4/8 shots, random vs RICES demonstrations,
   CIDEr-D on held-out captions and VQA accuracy on held-out questions.

The training text uses the evaluation's own prompt templates, so the demo measures whether the
model reads the images and the demonstrations, not whether it can infer a format.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "bar")
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 70, 240), "yellow": (240, 220, 20)}
BACKGROUNDS = ((15, 15, 15), (235, 235, 235))
QUESTIONS = {"shape": "what shape is it?", "colour": "what colour is it?"}
IMAGE_SIZE = 32
# A smaller resampler than the released one (depth 6, 64 latents, 8 x 64 heads), for the CPU.
PERCEIVER = {"depth": 2, "num_latents": 16, "heads": 4, "dim_head": 32}
REQUIRES = ("transformers", "tokenizers", "PIL", "scipy", "matplotlib")


def draw(shape: str, colour: str, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    s = IMAGE_SIZE
    img = Image.new("RGB", (s, s), BACKGROUNDS[int(rng.integers(2))])
    d = ImageDraw.Draw(img)
    r = s * rng.uniform(0.28, 0.42)
    cx, cy = s / 2 + rng.uniform(-4, 4), s / 2 + rng.uniform(-4, 4)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        d.rectangle([cx - r * 0.25, cy - r, cx + r * 0.25, cy + r], fill=fill)
        d.rectangle([cx - r, cy - r * 0.25, cx + r, cy + r * 0.25], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        d.rectangle([cx - r, cy - r * 0.3, cx + r, cy + r * 0.3], fill=fill)
    return img


def _items(folder, n, rng, prefix):
    os.makedirs(folder, exist_ok=True)
    out = []
    for i in range(n):
        shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
        name = f"{prefix}{i:05d}.png"
        draw(shape, colour, rng).save(os.path.join(folder, name))
        out.append({"name": name, "shape": shape, "colour": colour, "caption": f"a {colour} {shape}"})
    return out


def _sentence(item, rng):
    kind = rng.integers(3)
    if kind == 0:
        return f"Output:{item['caption']}"
    key = "shape" if kind == 1 else "colour"
    return f"Question:{QUESTIONS[key]} Short answer:{item[key]}"


def make_demo_data(out_dir: str, *, n_train: int = 1024, n_test: int = 64, seed: int = 0) -> dict:
    """Writes the generated data sets into out_dir (see the module docstring); returns their paths."""
    from fmkit.datacomp.pool import write_tar_shard

    rng = np.random.default_rng(seed)
    train_dir = os.path.join(out_dir, "train")
    train = _items(train_dir, n_train, rng, "train")
    docs, i = [], 0
    while i < n_train:
        k = int(rng.integers(2, 4))
        group = train[i:i + k]
        i += k
        sentences = [_sentence(it, rng) for it in group]
        sim = np.clip(0.05 + 0.05 * rng.standard_normal((len(group), len(group))), 0, 0.2)
        sim[np.arange(len(group)), np.arange(len(group))] = rng.uniform(0.28, 0.4, len(group))
        docs.append({"text_list": sentences, "image_info": [{"image_name": f"train/{it['name']}"} for it in group],
                     "similarity_matrix": sim.round(4).tolist()})
    mmc4 = os.path.join(out_dir, "mmc4.jsonl")
    with open(mmc4, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    laion = os.path.join(out_dir, "laion.tar")
    write_tar_shard(laion, [{"key": f"{j:05d}", "jpg": draw(it["shape"], it["colour"], rng), "txt": it["caption"]}
                            for j, it in enumerate(train[: n_train // 2])])

    # Held-out evaluation sets in the reference formats; the demonstrations are training images.
    coco = os.path.join(out_dir, "coco")
    test = _items(os.path.join(coco, "images"), n_test, rng, "test")
    images = [{"filepath": os.path.relpath(train_dir, coco), "filename": it["name"], "split": "train", "cocoid": j,
               "sentences": [{"raw": it["caption"]}]} for j, it in enumerate(train)]
    images += [{"filepath": "images", "filename": it["name"], "split": "test", "cocoid": 100000 + j,
                "sentences": [{"raw": it["caption"]}, {"raw": f"a {it['shape']} in {it['colour']}"}]}
               for j, it in enumerate(test)]
    with open(os.path.join(coco, "karpathy.json"), "w") as f:
        json.dump({"dataset": "coco", "images": images}, f)
    vqa = os.path.join(out_dir, "vqa")
    shutil.copytree(os.path.join(coco, "images"), os.path.join(vqa, "images"))
    for split, items, folder in (("train", train, train_dir), ("test", test, None)):
        qs, anns = [], []
        for j, it in enumerate(items):
            key = "shape" if j % 2 else "colour"
            qid = j
            name = os.path.relpath(os.path.join(folder, it["name"]), os.path.join(vqa, "images")) if folder \
                else it["name"]
            qs.append({"question_id": qid, "image": name, "question": QUESTIONS[key]})
            anns.append({"question_id": qid, "answers": [{"answer": it[key]}] * 10})
        with open(os.path.join(vqa, f"{split}_questions.json"), "w") as f:
            json.dump({"questions": qs}, f)
        with open(os.path.join(vqa, f"{split}_annotations.json"), "w") as f:
            json.dump({"annotations": anns}, f)
    texts = [" ".join(d["text_list"]) for d in docs] + [it["caption"] for it in train]
    return {"mmc4": mmc4, "laion": laion, "coco": coco, "vqa": vqa, "train": train, "texts": texts,
            "train_dir": train_dir}


def make_tokenizer(texts):
    """A word-level tokenizer over the demo's words, with Flamingo's special tokens."""
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    words = texts + ["Output Question Short answer is an image with written on it hateful Answer"]
    tok.train_from_iterator(words, tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "<eos>", "<PAD>"]))
    out = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>",
                                               pad_token="<PAD>")
    out.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    return out


def pretrain_lm(out_dir, texts, *, steps=300, seed=0, progress=True):
    """A tiny GPT-2 trained on text alone, saved with its tokenizer as a Hugging Face folder."""
    import transformers
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(texts)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
    lm = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    docs = [t for t in texts if "Output" in t or "Question" in t]
    tokenizer.padding_side = "right"
    for _ in tqdm(range(steps), desc="LM (text only)", disable=not progress):
        batch = [docs[i] for i in rng.integers(0, len(docs), 32)]
        # The LM sees the documents' text with the images' places marked, as Flamingo will.
        batch = ["<image>" + t.replace(" Output", "<|endofchunk|><image>Output").replace(
            " Question", "<|endofchunk|><image>Question") + "<|endofchunk|><eos>" for t in batch]
        enc = tokenizer(batch, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = lm(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return float(loss.detach())


def train_clip_tower(out_dir, train_items, train_dir, *, steps=200, seed=0, progress=True):
    """A tiny fmkit.clip CLIP on the demo's pairs, saved as a `fmkit datacomp train` folder."""
    from PIL import Image

    from fmkit.clip import create_model, train_clip
    from fmkit.datacomp.cli import CHECKPOINT_META
    from fmkit.datacomp.data import WordTokenizer, batches

    torch.manual_seed(seed)
    captions = [it["caption"] for it in train_items]
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(os.path.join(train_dir, it["name"])).convert("RGB"),
                                                      dtype=np.float32) / 255).permute(2, 0, 1)
                          for it in train_items])
    tokenizer = WordTokenizer(captions)
    model = create_model("tiny", vocab_size=len(tokenizer), context_length=tokenizer.context_length,
                         image_size=IMAGE_SIZE)
    batch = min(64, len(captions))
    result = train_clip(model, batches(images, tokenizer(captions), batch, seed=seed), steps=steps, batch_size=batch,
                        lr=1e-3, warmup=20, precision="fp32", progress=progress)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CHECKPOINT_META), "w") as f:
        json.dump({"model": "tiny", "image_size": IMAGE_SIZE, "vocab": tokenizer.vocab,
                   "context_length": tokenizer.context_length, "scale": "tiny"}, f)
    torch.save(model.state_dict(), os.path.join(out_dir, "model.pt"))
    return result.losses[-1]


def run_demo(out_dir: str, *, n_train: int = 1024, n_test: int = 48, clip_steps: int = 200, lm_steps: int = 300,
             flamingo_steps: int = 300, shots=(0, 4, 8), seed: int = 0, progress: bool = True) -> dict:
    from fmkit.flamingo.data import InterleavedStream, PairStream, image_transform, load_task
    from fmkit.flamingo.evaluate import FewShotEvaluator
    from fmkit.flamingo.train import build_flamingo, train_flamingo, write_meta

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small gain nothing from threads, and stall on busy cores
    try:
        return _run(out_dir, n_train, n_test, clip_steps, lm_steps, flamingo_steps, shots, seed, progress)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir, n_train, n_test, clip_steps, lm_steps, flamingo_steps, shots, seed, progress):
    from fmkit.flamingo.data import InterleavedStream, PairStream, image_transform, load_task
    from fmkit.flamingo.evaluate import FewShotEvaluator
    from fmkit.flamingo.train import build_flamingo, train_flamingo, write_meta

    t_start = time.perf_counter()
    data = make_demo_data(os.path.join(out_dir, "data"), n_train=n_train, n_test=n_test, seed=seed)
    clip_dir, lm_dir, ckpt = (os.path.join(out_dir, d) for d in ("clip", "lm", "flamingo"))
    clip_loss = train_clip_tower(clip_dir, data["train"], data["train_dir"], steps=clip_steps, seed=seed,
                                 progress=progress)
    lm_loss = pretrain_lm(lm_dir, data["texts"], steps=lm_steps, seed=seed, progress=progress)
    torch.manual_seed(seed)
    model, tokenizer, image_size = build_flamingo(lm_dir, clip_dir, perceiver=PERCEIVER)
    proc = image_transform(image_size)
    mmc4 = InterleavedStream(data["mmc4"], tokenizer, proc, 8, max_images=3, max_tokens=64, seed=seed)
    laion = PairStream(data["laion"], tokenizer, proc, 16, seed=seed)
    t_train = time.perf_counter()
    result = train_flamingo(model, mmc4=mmc4, laion=laion, steps=flamingo_steps, lr=3e-3, warmup=20,
                            loss_multiplier_laion=0.2, checkpoint_dir=ckpt, progress=progress)
    write_meta(ckpt, lm=os.path.relpath(lm_dir, ckpt), vision=os.path.relpath(clip_dir, ckpt), cross_attn_every_n_layers=1,
               image_size=image_size, perceiver=PERCEIVER)
    train_s = time.perf_counter() - t_train

    rows = {}
    t_eval = time.perf_counter()
    for task, folder in (("coco", data["coco"]), ("vqav2", data["vqa"])):
        sets = load_task(task, folder)
        ev = FewShotEvaluator(model, tokenizer, proc, task=task, demos=sets["demos"], queries=sets["queries"],
                              batch_size=8, seed=seed)
        for rices in (False, True):
            rows[(task, rices)] = ev.evaluate(shots=shots, rices=rices)
    eval_s = time.perf_counter() - t_eval
    table = _table(rows, shots)
    header = (f"Tiny Flamingo on generated shapes (CPU, {torch.get_num_threads()} threads): CLIP tower "
              f"{clip_steps} steps (loss {clip_loss:.3f}), text-only GPT-2 {lm_steps} steps (loss {lm_loss:.3f}), "
              f"Flamingo {flamingo_steps} steps in {train_s:.0f} s (MMC4 loss {result.losses_mmc4[0]:.3f} -> "
              f"{result.losses_mmc4[-1]:.3f}, LAION {result.losses_laion[0]:.3f} -> {result.losses_laion[-1]:.3f}); "
              f"evaluation {eval_s:.0f} s on {n_test} held-out images; total {time.perf_counter() - t_start:.0f} s.")
    print("\n" + header + "\n\n" + table)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(header + "\n\n" + table + "\n")
    _plot(rows, shots, os.path.join(out_dir, "flamingo_demo.png"))
    return {"rows": rows, "train": result, "header": header}


def _table(rows, shots):
    lines = ["| task (metric) | demonstrations | " + " | ".join(f"{s}-shot" for s in shots) + " |",
             "|---|---|" + "---:|" * len(shots)]
    for (task, rices), scores in rows.items():
        name = "captioning (CIDEr-D x100)" if task == "coco" else "VQA (accuracy %)"
        lines.append(f"| {name} | {'RICES' if rices else 'random'} | "
                     + " | ".join(f"{100 * scores[s]:.1f}" for s in shots) + " |")
    return "\n".join(lines)


def _plot(rows, shots, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, task, label in ((axes[0], "coco", "CIDEr-D x100"), (axes[1], "vqav2", "VQA accuracy %")):
        for rices, style in ((False, "o--"), (True, "s-")):
            ax.plot(list(shots), [100 * rows[(task, rices)][s] for s in shots], style,
                    label="RICES" if rices else "random")
        ax.set_xlabel("shots")
        ax.set_ylabel(label)
        ax.set_xticks(list(shots))
        ax.legend()
    fig.suptitle("Tiny Flamingo, generated shapes: few-shot evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
