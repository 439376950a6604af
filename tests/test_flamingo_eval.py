"""fmkit.flamingo.evaluate / metrics / data loaders: the reference's prompts, RICES, the metrics,
the local loaders and the evaluator's fast path against the reference-style loop."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
PIL = pytest.importorskip("PIL")

from fmkit.flamingo import data as fdata  # noqa: E402
from fmkit.flamingo.evaluate import (  # noqa: E402
    FewShotEvaluator,
    RandomDemos,
    Rices,
    build_prompt,
    effective_num_shots,
    postprocess_caption,
    postprocess_vqa,
    reference_style_generate,
)
from fmkit.flamingo.metrics import (  # noqa: E402
    cider_d,
    cider_d_scores,
    normalize_vqa_answer,
    ptb_tokenize,
    roc_auc,
    vqa_accuracy,
    vqa_accuracy_scores,
)
from test_flamingo import tiny_flamingo  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: extra threads only add synchronisation (and stall when the cores are busy);
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---- prompts (spec §2.8) ----

CAP = [{"image": "a.jpg", "caption": " a red circle "}, {"image": "b.jpg", "caption": "a blue square"}]
QA = [{"image": "a.jpg", "question": "What colour?", "answers": ["red"] * 10},
      {"image": "b.jpg", "question": "What shape?", "answers": ["square"] * 10}]


def test_prompts_equal_the_reference_strings():
    q = {"image": "q.jpg", "question": "How many?", "text": "hi", "caption": "x"}
    assert build_prompt("coco", CAP, q, 2) == \
        "<image>Output:a red circle<|endofchunk|><image>Output:a blue square<|endofchunk|><image>Output:"
    assert build_prompt("vqav2", QA, q, 2) == ("<image>Question:What colour? Short answer:red<|endofchunk|>"
                                               "<image>Question:What shape? Short answer:square<|endofchunk|>"
                                               "<image>Question:How many? Short answer:")
    # 0-shot: two text-only demonstrations, the query keeps its <image>.
    assert effective_num_shots(0) == 2 and effective_num_shots(4) == 4
    assert build_prompt("okvqa", QA, q, 0) == ("Question:What colour? Short answer:red<|endofchunk|>"
                                               "Question:What shape? Short answer:square<|endofchunk|>"
                                               "<image>Question:How many? Short answer:")
    memes = [{"image": "m.png", "text": "so fun", "label": 1}, {"image": "n.png", "text": "ok", "label": 0}]
    assert build_prompt("hatefulmemes", memes, q, 2) == (
        "<image>is an image with: 'so fun' written on it. Is it hateful? Answer:yes<|endofchunk|>"
        "<image>is an image with: 'ok' written on it. Is it hateful? Answer:no<|endofchunk|>"
        "<image>is an image with: 'hi' written on it. Is it hateful? Answer:")
    with pytest.raises(ValueError, match="4-shot needs 4 demonstrations, got 2"):
        build_prompt("coco", CAP, q, 4)
    with pytest.raises(ValueError, match="task: unknown task 'cifar'"):
        build_prompt("cifar", CAP, q, 2)
    assert postprocess_caption(" a dog Output: a cat") == "a dog"
    assert postprocess_vqa("yes, it is Question: no") == "yes" and postprocess_vqa("two Short answer") == "two"


# ---- demonstrations ----

def test_rices_picks_the_true_nearest_and_never_the_query():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    rices = Rices(feats)
    queries = feats[[3, 7, 11]]
    rows = rices.find(queries, 5, exclude=[3, 7, -1])
    for row, qi, ex in zip(rows, (3, 7, 11), (3, 7, -1)):
        sims = feats @ feats[qi]
        if ex >= 0:
            sims[ex] = -10
        expected = sims.argsort(descending=True)[:5].tolist()
        assert row == expected[::-1]  # most similar last, next to the query
        assert ex not in row
    assert 11 in rows[2]  # not excluded: a query equal to a demo finds it
    with pytest.raises(ValueError, match="k: expected 1 <= k <= 39"):
        rices.find(queries, 40, exclude=[3, 7, -1])


def test_random_demos_are_seeded_and_skip_the_query():
    demos = [{"image": f"{i}.jpg"} for i in range(10)]
    a = RandomDemos(demos, seed=1).find([{"image": "3.jpg"}] * 20, 4)
    assert a == RandomDemos(demos, seed=1).find([{"image": "3.jpg"}] * 20, 4)
    assert all(3 not in row and len(set(row)) == 4 for row in a)


# ---- metrics ----

def test_vqa_accuracy_leave_one_out():
    preds = ["two"] * 5
    answers = [["two"] * k + ["three"] * (10 - k) for k in (1, 2, 3, 4, 0)]
    assert vqa_accuracy_scores(preds, answers) == pytest.approx([0.3, 0.6, 0.9, 1.0, 0.0])
    assert vqa_accuracy(preds[:4], answers[:4]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"answers\[1\]: expected the 10 human answers .* got 3 answers"):
        vqa_accuracy(["a", "b"], [["a"] * 10, ["b"] * 3])


@pytest.mark.parametrize("raw,norm", [("Two dogs.", "2 dogs"), ("the cat", "cat"), ("dont", "don't"),
                                      ("1,000", "1000"), ("3.5", "3.5"), ("yes!", "yes"),
                                      ("black/white", "black white"),
                                      ("An apple", "apple"), ("none", "0"), ("Youre", "you're")])
def test_vqa_normalisation(raw, norm):
    assert normalize_vqa_answer(raw) == norm


def test_vqa_normalisation_applies_when_humans_disagree():
    disagree = ["2"] * 5 + ["3"] * 5
    assert vqa_accuracy(["Two."], [disagree]) == pytest.approx(1.0)
    # All ten agree: the official script compares the raw (stripped) strings.
    assert vqa_accuracy(["two"], [["2"] * 10]) == 0.0
    assert vqa_accuracy(["two"], [["2"] * 10], normalize="always") == 1.0


def test_ptb_tokenize():
    assert ptb_tokenize("A man, riding a horse.") == "a man riding a horse"
    assert ptb_tokenize("Don't stop! It's the dogs' bowl (red).") == "do n't stop it 's the dogs bowl red"
    assert ptb_tokenize('The "big" 3.5 km-long road...') == "the big 3.5 km-long road"


def test_cider_d_hand_computed():
    # Each candidate equals its only reference and shares no n-gram with the other image: every
    # TF-IDF vector is parallel to its reference's, no length penalty: 10 per image.
    cands = ["a red big circle", "two blue squares here"]
    assert cider_d_scores(cands, [[c] for c in cands]) == pytest.approx([10.0, 10.0])
    # An n-gram in every image's references has idf 0 and contributes nothing.
    assert cider_d(["the", "the"], [["the"], ["the"]]) == 0.0
    assert cider_d(["A red circle."], [["a red circle"]]) == cider_d(["a red circle"], [["a red circle"]])
    with pytest.raises(ValueError, match="references: 1 reference lists for 2 candidates"):
        cider_d(["a", "b"], [["a"]])


def test_roc_auc_matches_pairs():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.integers(0, 2, 60)
    pairs = [(a > b) + 0.5 * (a == b) for a, ya in zip(s, y) for b, yb in zip(s, y) if ya == 1 and yb == 0]
    assert roc_auc(s, y) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="needs both classes"):
        roc_auc([0.1, 0.2], [1, 1])


# ---- loaders ----

def _png(path, colour):
    PIL.Image.new("RGB", (16, 16), colour).save(path)


def test_loaders(tmp_path):
    (tmp_path / "val2014").mkdir()
    for i, c in enumerate(("red", "blue", "green")):
        _png(tmp_path / "val2014" / f"{i}.jpg", c)
    karpathy = {"images": [{"filepath": "val2014", "filename": f"{i}.jpg", "split": s, "cocoid": i,
                            "sentences": [{"raw": f"caption {i} a"}, {"raw": f"caption {i} b"}]}
                           for i, s in enumerate(("train", "restval", "test"))]}
    (tmp_path / "karpathy.json").write_text(json.dumps(karpathy))
    task = fdata.load_task("coco", tmp_path)
    assert [d["id"] for d in task["demos"]] == [0, 1] and task["queries"][0]["references"] == ["caption 2 a",
                                                                                                "caption 2 b"]
    assert task["queries"][0]["image"] == str(tmp_path / "val2014" / "2.jpg")

    (tmp_path / "images").mkdir()
    _png(tmp_path / "images" / "COCO_val2014_000000000007.jpg", "red")
    qs = {"questions": [{"question_id": 70, "image_id": 7, "question": "What colour? "}]}
    ann = {"annotations": [{"question_id": 70, "answers": [{"answer": "red"}] * 10}]}
    (tmp_path / "q.json").write_text(json.dumps(qs))
    (tmp_path / "a.json").write_text(json.dumps(ann))
    items = fdata.load_vqa(tmp_path / "q.json", tmp_path / "a.json", tmp_path / "images")
    assert items[0]["question"] == "What colour?" and len(items[0]["answers"]) == 10
    qs["questions"][0]["image_id"] = 8
    (tmp_path / "q.json").write_text(json.dumps(qs))
    with pytest.raises(FileNotFoundError, match="question 70: image file not found"):
        fdata.load_vqa(tmp_path / "q.json", tmp_path / "a.json", tmp_path / "images")

    (tmp_path / "memes.jsonl").write_text('{"id": 1, "img": "img/1.png", "label": 1, "text": "hi"}\n')
    assert fdata.load_hateful_memes(tmp_path / "memes.jsonl", tmp_path)[0]["label"] == 1
    (tmp_path / "folder" / "golden_fish").mkdir(parents=True)
    _png(tmp_path / "folder" / "golden_fish" / "x.png", "red")
    items, classes = fdata.load_image_folder(tmp_path / "folder")
    assert classes == ["golden fish"] and items[0]["label"] == 0
    with pytest.raises(FileNotFoundError, match="image file not found"):
        fdata.load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="task: unknown task 'mnist'"):
        fdata.load_task("mnist", tmp_path)


# ---- the evaluator ----

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 60, 230), "white": (240, 240, 240)}


@pytest.fixture(scope="module")
def evaluator_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("flamingo_eval")
    items = []
    for i in range(12):
        name = list(COLOURS)[i % 4]
        path = root / f"{i}.png"
        img = PIL.Image.new("RGB", (16, 16), COLOURS[name])
        img.putpixel((i, i), (0, 0, 0))
        img.save(path)
        items.append({"id": i, "image": str(path), "caption": f"a {name} photo", "references": [f"a {name} photo"],
                      "question": "a photo of", "answers": [name] * 10, "label": i % 2, "text": "a",
                      "class_name": name})
    return items


def _open_gates(model):
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(0.5)
    return model


@pytest.mark.slow
def test_fast_generation_equals_the_reference_style_loop(evaluator_items):
    model, tok = tiny_flamingo()
    _open_gates(model)
    ev = FewShotEvaluator(model, tok, fdata.image_transform(16), task="coco", demos=evaluator_items[:8],
                          queries=evaluator_items[8:], batch_size=2, num_beams=3, max_new_tokens=4)
    for shots, rices in ((0, False), (2, True)):
        prompts, images = ev.batch_inputs(evaluator_items[8:10], shots, rices)
        assert len(images[0]) == (1 if shots == 0 else 3)
        fast = ev.generate(prompts, images, min_new_tokens=4)
        slow = ev.generate(prompts, images, reference_style=True, min_new_tokens=4)
        assert fast == slow and all(len(t.split()) >= 1 for t in fast)
    scores = ev.evaluate(shots=(0, 2), rices=True)
    assert set(scores) == {0, 2} and all(0.0 <= v <= 10.0 for v in scores.values())
    # The demo latents were encoded once: 8 demos + 4 queries.
    assert len(ev._latents) == 12


def test_reference_style_generate_matches_model_generate(evaluator_items):
    model, tok = tiny_flamingo()
    _open_gates(model)
    ev = FewShotEvaluator(model, tok, fdata.image_transform(16), task="vqav2", demos=evaluator_items[:8],
                          queries=evaluator_items[8:])
    prompts, images = ev.batch_inputs(evaluator_items[8:10], 2, False)
    tok.padding_side = "left"
    enc = tok(prompts, padding="longest", return_tensors="pt")
    vision_x = torch.stack([ev.pixels(p) for p in images])[:, :, None]
    kwargs = dict(num_beams=2, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    a = model.generate(vision_x, enc["input_ids"], enc["attention_mask"], **kwargs)
    b = reference_style_generate(model, vision_x, enc["input_ids"], enc["attention_mask"], **kwargs)
    assert torch.equal(a, b)


def test_rank_classification_and_classification_metrics(evaluator_items):
    model, tok = tiny_flamingo()
    _open_gates(model)
    for task, classes in (("hatefulmemes", ["no", "yes"]), ("imagenet", ["red", "green", "blue", "white"])):
        ev = FewShotEvaluator(model, tok, fdata.image_transform(16), task=task, demos=evaluator_items[:8],
                              queries=evaluator_items[8:], classes=classes)
        prompts, images = ev.batch_inputs(evaluator_items[8:10], 2, False)
        ll = ev.class_log_likelihoods(prompts, images)
        assert ll.shape == (2, len(classes)) and (ll <= 0).all()
        # The cached-media batch equals scoring one continuation at a time without any cache.
        from fmkit.flamingo.model import conditioned

        ids = tok(prompts[0] + classes[1], add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_cls = len(tok(classes[1], add_special_tokens=False)["input_ids"])
        with torch.no_grad(), conditioned(model, ev.pixels(images[0])[None, :, None]) as lm:
            logp = lm(input_ids=ids).logits.log_softmax(-1)[0]
        expected = sum(logp[j - 1, ids[0, j]] for j in range(ids.shape[1] - n_cls, ids.shape[1]))
        assert ll[0, 1].item() == pytest.approx(expected.item(), abs=1e-4)
        score = ev.evaluate(shots=(2,))[2]
        assert 0.0 <= score <= 1.0


# ---- the CLI (fmkit flamingo train | eval) ----

def _cli(argv, capsys):
    from fmkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    code, err = _cli(["flamingo", "train", "--lm", str(tmp_path), "--vision", str(tmp_path), "--out",
                      str(tmp_path / "o"), "--steps", "1"], capsys)
    assert code == 2 and "give --mmc4 and/or --laion" in err
    code, err = _cli(["flamingo", "eval", "--checkpoint", str(tmp_path), "--task", "coco", "--data", str(tmp_path),
                      "--shots", "0,x"], capsys)
    assert code == 2 and "--shots: expected comma-separated integers" in err
    code, err = _cli(["flamingo", "eval", "--checkpoint", str(tmp_path), "--task", "coco", "--data", str(tmp_path)],
                     capsys)
    assert code == 2 and "karpathy.json" in err
    code, err = _cli(["flamingo", "eval", "--checkpoint", str(tmp_path), "--task", "mnist", "--data", str(tmp_path)],
                     capsys)
    assert code == 2 and "invalid choice: 'mnist'" in err


@pytest.mark.slow
def test_cli_train_then_eval(tmp_path, capsys):
    from fmkit.cli import main
    from fmkit.flamingo.demo import make_demo_data, pretrain_lm, train_clip_tower

    data = make_demo_data(str(tmp_path / "data"), n_train=24, n_test=4)
    train_clip_tower(str(tmp_path / "clip"), data["train"], data["train_dir"], steps=2, progress=False)
    pretrain_lm(str(tmp_path / "lm"), data["texts"], steps=2, progress=False)
    out = tmp_path / "run"
    assert main(["flamingo", "train", "--lm", str(tmp_path / "lm"), "--vision", str(tmp_path / "clip"),
                 "--mmc4", data["mmc4"], "--laion", data["laion"], "--out", str(out), "--steps", "2",
                 "--batch-size-mmc4", "2", "--batch-size-laion", "2", "--warmup", "0",
                 "--loss-multiplier-laion", "0.2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    results = tmp_path / "r.json"
    assert main(["flamingo", "eval", "--checkpoint", str(out), "--task", "coco", "--data", data["coco"],
                 "--shots", "0,2", "--limit", "2", "--num-beams", "1", "--rices", "--out", str(results)]) == 0
    saved = json.loads(results.read_text())
    assert saved["metric"] == "CIDEr" and set(saved["scores"]) == {"0", "2"}
    assert main(["flamingo", "eval", "--checkpoint", str(out), "--task", "vqav2", "--data", data["vqa"],
                 "--shots", "2", "--limit", "2", "--num-beams", "1"]) == 0
    assert "VQA accuracy" in capsys.readouterr().out


def test_a_generated_image_token_starts_no_new_image():
    """A generated <image> token neither raises nor moves to a new image (the reference keeps the
    prompt's media locations while generating); it used to raise 'more <image> tokens than images'."""
    model, tok = tiny_flamingo()
    _open_gates(model)
    tok.padding_side = "left"
    enc = tok(["<image> a photo of", "<image> two birds"], padding="longest", return_tensors="pt")
    vision_x = torch.randn(2, 1, 1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, sequence_bias={(model.image_token_id,): 50.0})
    for num_beams in (1, 2):
        out = model.generate(vision_x, enc["input_ids"], enc["attention_mask"], num_beams=num_beams, **kwargs)
        assert (out[:, enc["input_ids"].shape[1]:] == model.image_token_id).all()
        ref = reference_style_generate(model, vision_x, enc["input_ids"], enc["attention_mask"], num_beams=num_beams,
                                       **kwargs)
        assert torch.equal(out, ref)
