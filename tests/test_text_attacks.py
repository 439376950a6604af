"""GCG / GBDA / ARCA and the solvable test set (fmkit.adversarial.text) on a tiny local tokenizer and a
tiny random GPT-2 (no downloads). Spec: /work/shared/specs/adversarial.md §2.2, §2.4, §2.5 item 9."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from fmkit.adversarial.text import (  # noqa: E402
    TargetObjective,
    _ChunkState,
    _chunked,
    arca,
    disallowed_tokens,
    gbda,
    gcg,
    greedy_continuation,
    normalize_rows,
    round_trip_filter,
    sample_candidates,
    solvable_text_attack_set,
    verify_solvable_case,
)

WORDS = ["!", "the", "cat", "dog", "sat", "on", "mat", "a", "big", "red", "blue", "ran", "to", "and", "is",
         "foo", "bar", "foo bar", "é", "yes", "no", "sure", "here", "it", "was", "hot", "cold", "sun", "moon", "sky"]
PAD_ROWS = 3  # embedding rows beyond len(tokenizer), as in padded HF vocabularies


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1}
    for w in WORDS:
        vocab[w] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<eos>")


def _model(vocab_size, std, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=64, n_layer=2, n_embd=32, n_head=2, bos_token_id=1,
                     eos_token_id=1, pad_token_id=1, initializer_range=std)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: one thread is faster and avoids oversubscription when other test processes run
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return _model(len(tok) + PAD_ROWS, std=0.3)


@pytest.fixture(scope="module")
def cases(tok, model):
    return solvable_text_attack_set(model, tok, num_attack_tokens=2, num_prefixes=24, max_entropy=1.0,
                                    num_cases=4, progress=False)


def _ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def _bad_ids(tok, vocab_size):
    return {0, 1, tok.convert_tokens_to_ids("é"), *range(len(tok), vocab_size)}


# ---------------------------------------------------------------------------------------------------- GCG pieces
def test_disallowed_tokens(tok, model):
    V = model.get_input_embeddings().weight.shape[0]
    mask = disallowed_tokens(tok, V)
    assert set(mask.nonzero().flatten().tolist()) == _bad_ids(tok, V)
    allow = disallowed_tokens(tok, V, allow_non_ascii=True)
    assert set(allow.nonzero().flatten().tolist()) == {0, 1, *range(len(tok), V)}


def test_token_gradient_rows_normalised_and_equal_onehot_gradient(tok, model):
    obj = TargetObjective(model, _ids(tok, "the cat sat"), _ids(tok, "on"), _ids(tok, "yes sure"))
    suffix = torch.tensor(_ids(tok, "big red dog ran"))
    raw = obj.token_gradients(suffix)
    V = model.get_input_embeddings().weight.shape[0]
    assert raw.shape == (4, V)
    # G = dL/dE = (dL/d emb) W^T for the one-hot matrix E
    g_emb, _ = obj.embedding_gradients(suffix[None])
    torch.testing.assert_close(raw, g_emb[0] @ obj.W.detach().float().T, rtol=1e-4, atol=1e-6)
    G = normalize_rows(raw)
    torch.testing.assert_close(G.norm(dim=-1), torch.ones(4), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4))  # the raw rows were not unit already


def test_prefix_cache_matches_full_forward(tok, model):
    args = (_ids(tok, "the cat sat on the"), _ids(tok, "and"), _ids(tok, "yes sure it"))
    cands = torch.randint(2, len(tok), (7, 5), generator=torch.Generator().manual_seed(0))
    a = TargetObjective(model, *args, use_prefix_cache=True)
    b = TargetObjective(model, *args, use_prefix_cache=False)
    assert a.kv is not None and b.kv is None
    la, sa = a.losses(cands)
    lb, sb = b.losses(cands)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    assert torch.equal(sa, sb)
    # and equal to a plain teacher-forced CE over the full sequence
    full = torch.tensor([args[0] + cands[0].tolist() + args[1] + args[2]])
    logits = model(input_ids=full).logits[0, -4:-1]
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(args[2]))
    torch.testing.assert_close(la[0], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.token_gradients(cands[0]), b.token_gradients(cands[0]), rtol=1e-4, atol=1e-6)


def test_disallowed_tokens_never_sampled(tok, model):
    V = model.get_input_embeddings().weight.shape[0]
    mask = disallowed_tokens(tok, V)
    L = 6
    grad = torch.randn(L, V, generator=torch.Generator().manual_seed(2))
    grad[:, mask] = -100.0  # disallowed tokens look best to -G
    suffix = torch.full((L,), tok.convert_tokens_to_ids("!"))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        cands, pos, top = sample_candidates(suffix, grad, mask, topk=10_000, search_width=128, generator=gen)
        assert not mask[top].any()
        assert not mask[cands].any()
    assert top.shape == (L, int((~mask).sum()))  # k is capped at the number of allowed tokens


@pytest.mark.parametrize("L,B,k", [(5, 64, 8), (3, 7, 4), (20, 512, 16)])
def test_candidate_b_edits_position_floor_bL_over_B_with_topk_token(tok, model, L, B, k):
    V = model.get_input_embeddings().weight.shape[0]
    mask = disallowed_tokens(tok, V)
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(L, V, generator=gen)
    suffix = torch.randint(2, 20, (L,), generator=gen)
    cands, pos, top = sample_candidates(suffix, grad, mask, topk=k, search_width=B, generator=gen)
    assert cands.shape == (B, L)
    assert pos.tolist() == [b * L // B for b in range(B)]
    masked = grad.clone()
    masked[:, mask] = float("inf")
    expect_top = (-masked).topk(k, dim=1).indices
    assert torch.equal(top, expect_top)
    for b in range(B):
        p = b * L // B
        other = torch.arange(L) != p
        assert torch.equal(cands[b, other], suffix[other])  # only position p may change
        assert int(cands[b, p]) in set(expect_top[p].tolist())
    # every top-k token is reachable: over many draws the sampled tokens cover the pool of position 0
    seen = set()
    for _ in range(50):
        c, _, _ = sample_candidates(suffix, grad, mask, topk=k, search_width=B, generator=gen)
        seen |= set(c[torch.arange(B) * L // B == 0, 0].tolist())
    assert seen == set(expect_top[0].tolist())


def test_round_trip_filter(tok):
    cur = torch.tensor(_ids(tok, "the cat sat"))
    foobar = tok.convert_tokens_to_ids("foo bar")
    cands = torch.stack([
        torch.tensor(_ids(tok, "the dog sat")),      # stable, changed -> keep
        cur.clone(),                                  # unchanged -> reject
        torch.tensor([foobar] + cur[1:].tolist()),    # "foo bar" re-encodes to 2 tokens -> reject
        torch.tensor(_ids(tok, "a cat sat")),         # stable, changed -> keep
        torch.tensor(_ids(tok, "the cat foo")),       # stable, changed -> keep
        torch.tensor(_ids(tok, "the mat") + [foobar]),  # unstable -> reject
    ])
    filled, keep = round_trip_filter(tok, cands, cur)
    assert keep.tolist() == [True, False, False, True, True, False]
    # llm-attacks: valid candidates in order, rejected slots refilled with the last valid one
    assert torch.equal(filled, cands[[0, 3, 4, 4, 4, 4]])
    filled, keep = round_trip_filter(tok, cands[[1, 2, 5]], cur)
    assert filled is None and not keep.any()


# ---------------------------------------------------------------------------------------------------- attacks
def test_gcg_lowers_target_loss(tok, model):
    prompt, target = "the cat sat on the", "yes sure it was"
    obj = TargetObjective(model, _ids(tok, prompt), [], _ids(tok, target))
    init = torch.tensor([_ids(tok, "! " * 6)])
    init_loss = float(obj.losses(init)[0][0])
    res = gcg(model, tok, prompt, target, suffix_length=6, num_steps=8, topk=16, search_width=48, seed=0,
              progress=False, early_stop=False)
    assert res.num_steps == 8 and len(res.losses) == 8
    assert res.loss < init_loss - 1e-3
    assert res.loss == pytest.approx(min(res.losses))
    assert len(res.suffix_ids) == 6 and res.suffix == tok.decode(res.suffix_ids)
    assert res.input_ids == _ids(tok, prompt) + res.suffix_ids + _ids(tok, target)
    assert float(obj.losses(torch.tensor([res.suffix_ids]))[0][0]) == pytest.approx(res.loss, abs=1e-5)
    bad = _bad_ids(tok, model.get_input_embeddings().weight.shape[0])
    assert not bad & set(res.suffix_ids)
    # every kept suffix round-trips through the tokenizer
    assert _ids(tok, res.suffix) == res.suffix_ids


def test_gcg_solves_solvable_cases(tok, model, cases):
    assert len(cases) >= 3
    n_success = 0
    for c in cases:
        obj = TargetObjective(model, [], c.prefix_ids, c.target_ids)
        sol_loss = float(obj.losses(torch.tensor([c.solution_ids]))[0][0])
        res = gcg(model, tok, **c.attack_kwargs(1), num_steps=40, topk=256, search_width=64, seed=0, progress=False)
        if res.success:
            n_success += 1
            assert verify_solvable_case(model, c, res.suffix_ids)  # greedy decoding really emits the target
            assert res.num_steps < 40  # early stop
        else:
            assert res.loss <= sol_loss + 1e-5
    assert n_success >= 2


def test_gcg_early_stop_when_already_successful(tok, model, cases):
    c = cases[0]
    res = gcg(model, tok, **c.attack_kwargs(1), init_suffix=c.solution_ids, num_steps=10, progress=False)
    assert res.success and res.num_steps == 0 and res.suffix_ids == c.solution_ids and res.losses == []


def test_arca_lowers_loss_monotonically(tok, model):
    prompt, target = "the cat sat on the", "yes sure it was"
    init = _ids(tok, "big big big big big")
    obj = TargetObjective(model, _ids(tok, prompt), [], _ids(tok, target))
    init_loss = float(obj.losses(torch.tensor([init]))[0][0])
    res = arca(model, tok, prompt, target, init_suffix=init, suffix_length=5, num_steps=10, num_random_tokens=8,
               num_candidates=8, progress=False, early_stop=False)
    assert res.num_steps == 10
    assert all(b <= a + 1e-6 for a, b in zip([init_loss] + res.losses, res.losses))  # coordinate ascent
    assert res.loss < init_loss - 1e-3
    assert not _bad_ids(tok, model.get_input_embeddings().weight.shape[0]) & set(res.suffix_ids)


def test_gbda_lowers_loss(tok, model):
    prompt, target = "the cat sat on the", "yes sure it was"
    res = gbda(model, tok, prompt, target, suffix_length=5, num_steps=25, gumbel_samples=8, num_final_samples=32,
               progress=False, early_stop=False)
    assert res.num_steps == 25
    assert sum(res.losses[-5:]) / 5 < sum(res.losses[:5]) / 5 - 1e-3  # relaxed loss goes down
    obj = TargetObjective(model, _ids(tok, prompt), [], _ids(tok, target))
    allowed = (~disallowed_tokens(tok, model.get_input_embeddings().weight.shape[0])).nonzero().flatten()
    rand = allowed[torch.randint(0, len(allowed), (64, 5), generator=torch.Generator().manual_seed(3))]
    rand_loss = obj.losses(rand)[0]
    assert res.loss < float(rand_loss.median())
    assert float(obj.losses(torch.tensor([res.suffix_ids]))[0][0]) == pytest.approx(res.loss, abs=1e-5)
    assert not _bad_ids(tok, model.get_input_embeddings().weight.shape[0]) & set(res.suffix_ids)


# ---------------------------------------------------------------------------------------------------- solvable set
def test_solvable_set_brute_force_check(tok, model, cases):
    V = model.get_input_embeddings().weight.shape[0]
    allowed = (~disallowed_tokens(tok, V)).nonzero().flatten()
    n = len(allowed)
    # independent enumeration of all 2-token attack sequences over the allowed tokens
    grid = torch.stack(torch.meshgrid(allowed, allowed, indexing="ij"), -1).reshape(-1, 2)
    for c in cases:
        assert c.exhaustive and c.num_sequences == n * n and c.num_attack_tokens == 2
        assert verify_solvable_case(model, c)
        ids = torch.cat([grid, torch.tensor(c.prefix_ids)[None].expand(len(grid), -1)], 1)
        out = greedy_continuation(model, ids, len(c.target_ids))
        hits = (out == torch.tensor(c.target_ids)).all(1)
        assert int(hits.sum()) == round(c.prevalence * n * n) >= 1
        assert c.solution_ids == grid[hits.nonzero()[0, 0]].tolist()
        # the target is the least likely observed continuation, and the entropy is small but positive
        _, counts = torch.unique(out, dim=0, return_counts=True)
        assert len(counts) >= 2 and int(hits.sum()) == int(counts.min())
        p = counts.double() / counts.sum()
        assert c.entropy == pytest.approx(float(-(p * p.log()).sum()))
        assert 0 < c.entropy <= 1.0
        # the check can fail: a wrong target, or a sequence that does not produce the target
        other = next(t for t in allowed.tolist() if [t] != c.target_ids)
        wrong = type(c)(**{**c.__dict__, "target_ids": [other]})
        assert verify_solvable_case(model, wrong) == bool((out == other).all(1)[hits.nonzero()[0, 0]])
        miss = grid[(~hits).nonzero()[0, 0]].tolist()
        assert not verify_solvable_case(model, c, miss)


def test_solvable_set_sampling_and_prefix_strings(tok, model):
    cs = solvable_text_attack_set(model, tok, ["the cat sat on the mat", "a big red dog ran to"],
                                  num_attack_tokens=3, max_sequences=500, max_entropy=5.0, progress=False)
    for c in cs:
        assert not c.exhaustive and c.num_sequences == 500 and len(c.solution_ids) == 3
        assert verify_solvable_case(model, c)
    assert len(cs) >= 1


# ---------------------------------------------------------------------------------------------------- plumbing
def test_oom_backoff_halves_chunk_and_matches(tok, model, monkeypatch):
    args = (_ids(tok, "the cat"), [], _ids(tok, "yes sure"))
    cands = torch.randint(2, len(tok), (37, 4), generator=torch.Generator().manual_seed(0))
    ref = TargetObjective(model, *args).losses(cands)[0]
    obj = TargetObjective(model, *args)
    orig = obj._target_ce
    sizes = []

    def flaky(e):
        sizes.append(e.shape[0])
        if e.shape[0] > 8:
            raise torch.OutOfMemoryError("fake")
        return orig(e)

    monkeypatch.setattr(obj, "_target_ce", flaky)
    got = obj.losses(cands)[0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert sizes[:3] == [37, 18, 9] and obj.chunk == 4  # 37 -> 18 -> 9 -> 4
    state = _ChunkState(1)
    with pytest.raises(torch.OutOfMemoryError):
        _chunked(state, 3, lambda a, b: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))


def test_model_state_untouched(tok):
    m = _model(len(tok), std=0.3, seed=1)
    m.train()
    gcg(m, tok, "the cat", "yes", suffix_length=3, num_steps=2, topk=8, search_width=8, progress=False)
    arca(m, tok, "the cat", "yes", suffix_length=3, num_steps=2, num_random_tokens=4, num_candidates=4, progress=False)
    gbda(m, tok, "the cat", "yes", suffix_length=3, num_steps=2, num_final_samples=4, progress=False)
    assert m.training
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("kwargs,name", [
    (dict(target=""), "target"),
    (dict(target=[]), "target"),
    (dict(suffix_length=0), "suffix_length"),
    (dict(topk=0), "topk"),
    (dict(search_width=0), "search_width"),
    (dict(num_steps=-1), "num_steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(prompt=[10_000]), "prompt"),
    (dict(init_suffix="the cat", suffix_length=3), "init_suffix"),
    (dict(prompt=3.5), "prompt"),
])
def test_gcg_bad_input_raises_value_error(tok, model, kwargs, name):
    call = dict(prompt="the cat", target="yes", num_steps=1, progress=False)
    call.update(kwargs)
    with pytest.raises(ValueError, match=name):
        gcg(model, tok, call.pop("prompt"), call.pop("target"), **call)


def test_other_bad_inputs(tok, model):
    with pytest.raises(ValueError, match="target"):
        gbda(model, tok, "the cat", "", progress=False)
    with pytest.raises(ValueError, match="suffix_length"):
        arca(model, tok, "the cat", "yes", suffix_length=0, progress=False)
    with pytest.raises(ValueError, match="num_candidates"):
        arca(model, tok, "the cat", "yes", num_candidates=0, progress=False)
    with pytest.raises(ValueError, match="lr"):
        gbda(model, tok, "the cat", "yes", lr=0.0, progress=False)
    with pytest.raises(ValueError, match="num_attack_tokens"):
        solvable_text_attack_set(model, tok, num_attack_tokens=0, progress=False)
    with pytest.raises(ValueError, match="prefixes"):
        solvable_text_attack_set(model, tok, "the cat", progress=False)
    with pytest.raises(ValueError, match="max_entropy"):
        solvable_text_attack_set(model, tok, max_entropy=0, progress=False)
