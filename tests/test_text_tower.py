import pytest
import torch

from pipeline.text_tower import TextTower

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
