import itertools

import open_clip
import pytest
import torch

from pipeline import text_tower
from pipeline.text_tower import TextTower, plan_groups

NAMES = ["red circle", "a much longer class name with several words", "dog"]


def test_truncated_equals_full_context_and_open_clip(tiny_clip, tiny_tower: TextTower):
    tokens = tiny_tower.tokenize([f"a photo of a {n}." for n in NAMES])
    truncated = tiny_tower.encode_tokens(tokens, truncate=True)
    full = tiny_tower.encode_tokens(tokens, truncate=False)
    reference = tiny_clip.encode_text(tokens, normalize=True)
    assert truncated.shape == (3, 32)
    torch.testing.assert_close(truncated, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(truncated, reference, atol=1e-5, rtol=1e-5)


def test_truncation_equality_with_spliced_context(tiny_tower: TextTower):
    emb, eot = tiny_tower.context_prompts(NAMES, n_ctx=4)
    ctx = torch.randn(len(NAMES), 4, tiny_tower.width)
    x = tiny_tower.splice_context(emb, ctx)
    torch.testing.assert_close(
        tiny_tower.encode_embeddings(x, eot, truncate=True),
        tiny_tower.encode_embeddings(x, eot, truncate=False),
        atol=1e-5,
        rtol=1e-5,
    )


def test_context_init_reproduces_plain_prompt(tiny_tower: TextTower):
    # Splicing the embeddings of "a photo of a" into "X X X X {name}." must give the plain prompt's feature.
    emb, eot = tiny_tower.context_prompts(NAMES, n_ctx=4)
    spliced = tiny_tower.encode_embeddings(
        tiny_tower.splice_context(emb, tiny_tower.context_init("a photo of a", 4)), eot
    )
    plain = tiny_tower.encode_texts([f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(spliced, plain, atol=1e-5, rtol=1e-5)


def test_context_init_length_mismatch_is_an_error(tiny_tower: TextTower):
    with pytest.raises(ValueError, match="n_ctx is 2"):
        tiny_tower.context_init("a photo of a", 2)


def test_tower_is_frozen_but_passes_gradients_to_inputs(tiny_tower: TextTower):
    tiny_tower.train()
    assert not tiny_tower.training
    assert all(not p.requires_grad for p in tiny_tower.parameters())
    emb, eot = tiny_tower.context_prompts(NAMES[:1], n_ctx=2)
    ctx = torch.zeros(2, tiny_tower.width, requires_grad=True)
    tiny_tower.encode_embeddings(tiny_tower.splice_context(emb, ctx), eot).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_zero_shot_classifier_rows_are_unit_norm(tiny_tower: TextTower):
    clf = tiny_tower.zero_shot_classifier(NAMES, ["a photo of a {}.", "a {}."])
    assert clf.shape == (3, 32)
    torch.testing.assert_close(clf.norm(dim=-1), torch.ones(3))


# --- grouping by length and the shared prefix: same results (and gradients) as the full-context forward ---------

WORDS = ["red", "circle", "golden", "retriever", "Boeing", "737-800", "apple", "pie", "annual", "crop", "land", "x"]


def _random_names(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=g).tolist()
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=g).tolist()) for k in lengths]


@pytest.fixture
def exact_buckets(monkeypatch):
    """No per-group overhead: every distinct length is its own group (the most groups, the hardest case)."""
    monkeypatch.setitem(text_tower.GROUP_OVERHEAD_TOKENS, "cpu", 0.0)


def _passes(tower: TextTower, monkeypatch) -> list[int]:
    """Record the length of every transformer pass the tower runs."""
    lengths: list[int] = []
    run = tower._run

    def spy(keys, x, start):
        lengths.append(x.shape[1])
        return run(keys, x, start)

    monkeypatch.setattr(tower, "_run", spy)
    return lengths


def test_plan_groups_trades_padding_against_overhead():
    lengths = [8] * 246 + [9] * 508 + [10] * 155 + [11] * 49 + [12] * 24 + [13] * 9 + [14] * 7 + [15, 18]
    assert plan_groups(lengths, 0.0) == [8, 9, 10, 11, 12, 13, 14, 15, 18]  # exact-length buckets
    assert plan_groups(lengths, 1e9) == [18]  # overhead dominates: the single truncated pass
    assert plan_groups([7] * 50, 0.0) == [7]  # all lengths equal
    assert plan_groups([3, 9], 32.0) == [9]  # a small batch: splitting saves 6 tokens, costs a pass
    assert plan_groups([], 1.0) == []


def _plan_cost(lengths: list[int], cuts: list[int], overhead: float) -> float:
    bounds = [0, *cuts]
    return sum(overhead + sum(1 for n in lengths if lo < n <= hi) * hi for lo, hi in itertools.pairwise(bounds))


def test_plan_groups_is_optimal_for_its_cost():
    # Brute force over every way to cut the distinct lengths into contiguous groups.
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        lengths = torch.randint(1, 12, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
        overhead = float(torch.randint(0, 20, (1,), generator=g))
        distinct = sorted(set(lengths))
        best = min(
            _plan_cost(lengths, [d for d, keep in zip(distinct, [*mask, True], strict=True) if keep], overhead)
            for mask in itertools.product([False, True], repeat=len(distinct) - 1)
        )
        assert _plan_cost(lengths, plan_groups(lengths, overhead), overhead) == best


def test_grouped_equals_full_context_and_open_clip(tiny_clip, tiny_tower: TextTower, exact_buckets, monkeypatch):
    tokens = tiny_tower.tokenize([f"a photo of a {n}." for n in _random_names(24, seed=1)])
    reference = tiny_clip.encode_text(tokens, normalize=True)
    full = tiny_tower.encode_tokens(tokens, truncate=False)
    passes = _passes(tiny_tower, monkeypatch)
    grouped = tiny_tower.encode_tokens(tokens)
    eot = tiny_tower.eot_positions(tokens)
    assert sorted(passes) == sorted(set((eot + 1).tolist())) and len(passes) > 3  # one pass per distinct length
    torch.testing.assert_close(grouped, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grouped, reference, atol=1e-5, rtol=1e-5)
    single = tiny_tower.encode_embeddings(tiny_tower.embed(tokens), eot, group=False)
    torch.testing.assert_close(grouped, single, atol=1e-5, rtol=1e-5)


def _features_and_grad(fn, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    context.grad = None
    out = fn()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * weights).sum().backward()  # a loss that weighs every feature dim differently
    return out.detach(), context.grad.clone()


@pytest.mark.parametrize("per_prompt", [False, True], ids=["shared-context", "per-prompt-context"])
def test_grouping_and_shared_prefix_match_full_context_with_gradients(
    tiny_tower: TextTower, exact_buckets, monkeypatch, per_prompt: bool
):
    names = _random_names(20, seed=2)
    emb, eot = tiny_tower.context_prompts(names, n_ctx=4)
    shape = (len(names), 4, tiny_tower.width) if per_prompt else (4, tiny_tower.width)
    ctx = torch.randn(shape, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    full = _features_and_grad(
        lambda: tiny_tower.encode_embeddings(tiny_tower.splice_context(emb, ctx), eot, truncate=False), ctx
    )
    variants = {
        "single pass": lambda: tiny_tower.encode_embeddings(tiny_tower.splice_context(emb, ctx), eot, group=False),
        "grouped": lambda: tiny_tower.encode_embeddings(tiny_tower.splice_context(emb, ctx), eot),
        "prompts, grouped": lambda: tiny_tower.encode_prompts(emb, eot, ctx),
        "prompts, single pass": lambda: tiny_tower.encode_prompts(emb, eot, ctx, group=False),
        "prompts, unshared": lambda: tiny_tower.encode_prompts(emb, eot, ctx, share_prefix=False),
    }
    for name, fn in variants.items():
        out, grad = _features_and_grad(fn, ctx)
        torch.testing.assert_close(out, full[0], atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(grad, full[1], atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    # The shared prefix really is shared: with one context the passes cover only the tokens after it.
    passes = _passes(tiny_tower, monkeypatch)
    tiny_tower.encode_prompts(emb, eot, ctx)
    longest = int(eot.max()) + 1
    assert max(passes) == (longest if per_prompt else longest - 5)


def _custom_text_clip(**text_cfg) -> tuple[torch.nn.Module, TextTower]:
    torch.manual_seed(0)
    vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8}
    text = {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2, **text_cfg}
    model = open_clip.CustomTextCLIP(32, vision, text).eval()
    return model, TextTower(model, open_clip.get_tokenizer("ViT-B-16", context_length=32))


@pytest.mark.parametrize(
    ("text_cfg", "shares_prefix"),
    [({}, True), ({"qk_norm": True}, False), ({"no_causal_mask": True}, False)],
    ids=["standard-blocks", "custom-blocks", "bidirectional"],
)
def test_custom_text_clip_towers(exact_buckets, text_cfg: dict, shares_prefix: bool):
    # CustomTextCLIP keeps the tower under `.text`; custom blocks fall back to unshared grouping, and a tower
    # without a causal mask (every position sees the padding) always runs the full context.
    model, tower = _custom_text_clip(**text_cfg)
    assert tower.shares_prefix is shares_prefix
    names = _random_names(12, seed=5)
    tokens = tower.tokenize([f"a photo of a {n}." for n in names])
    torch.testing.assert_close(
        tower.encode_tokens(tokens), model.encode_text(tokens, normalize=True), atol=1e-5, rtol=1e-5
    )
    emb, eot = tower.context_prompts(names, n_ctx=4)
    ctx = torch.randn(4, tower.width).requires_grad_(True)
    full = _features_and_grad(lambda: tower.encode_embeddings(tower.splice_context(emb, ctx), eot, truncate=False), ctx)
    out, grad = _features_and_grad(lambda: tower.encode_prompts(emb, eot, ctx), ctx)
    torch.testing.assert_close(out, full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, full[1], atol=1e-5, rtol=1e-4)


def test_one_prompt_and_equal_lengths_take_one_pass(tiny_tower: TextTower, monkeypatch):
    passes = _passes(tiny_tower, monkeypatch)
    tiny_tower.encode_texts(["a photo of a dog."])
    tiny_tower.encode_texts(["a photo of a dog.", "a photo of a cat.", "a photo of a cow."])
    assert len(passes) == 2


def test_empty_batch_gives_no_features(tiny_tower: TextTower):
    emb, eot = tiny_tower.context_prompts(NAMES, n_ctx=4)
    assert tiny_tower.encode_embeddings(emb[:0], eot[:0]).shape == (0, 32)
    assert tiny_tower.encode_prompts(emb[:0], eot[:0], torch.zeros(4, tiny_tower.width)).shape == (0, 32)
