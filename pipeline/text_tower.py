"""TextTower: the one module that reaches into CLIP's text tower.

SHIP's generator and CoOp both feed *token embeddings* (learned context vectors spliced into a tokenized
prompt) through the frozen text transformer, which open_clip's `encode_text` cannot do. Everything that
touches the tower's internals (token embedding, positional embedding, causal mask, transformer blocks, final LN,
pooling at the end-of-text token, projection) lives here and nowhere else.

Work skipped without changing the result (the mask is causal, so position t depends only on positions <= t):
- Truncation: the feature pooled at the end-of-text (EOT) token depends only on positions up to it, so nothing
  after a prompt's EOT is computed.
- Grouping by length: prompts run in groups of similar EOT position, each group truncated to its own longest EOT
  (a 1000-class ImageNet batch is 9.2 tokens per prompt on average but 18 at the longest). Groups are chosen by
  `plan_groups` from the lengths alone (deterministic), trading padded tokens against a per-group overhead.
- Shared prefix (`encode_prompts` with one context [L, D] for every prompt, as in CoOp): the start token and the
  context are the same for every class, so their activations are computed once per call, and each prompt runs
  only its own tokens, attending to the shared prefix's keys and values.
Results equal the full-context forward up to float error.

Prompts never overflow silently: CLIP's tokenizer cuts a text longer than the context and ends it with an EOT
token, so a long class name (or too many context tokens) would give a prompt without its class name, and two names
equal up to the cut would give the same classifier row. `check_prompts_fit` / `check_templates_fit` (called by the
stages before any work, and by `context_prompts` / `zero_shot_classifier` themselves) raise PromptTooLong naming
the class names that do not fit; classifier rows that coincide are logged as a warning naming the classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from pipeline.errors import ExpectedError

Tokenizer = Callable[[Sequence[str]], torch.Tensor]
log = logging.getLogger(__name__)

# Per-pass overhead of the transformer, in prompt tokens' worth of work (the cost model of `plan_groups`). CPU: on
# ViT-B-16 at 2 threads, forward + backward, a pass costs 17-41 tokens' work beyond its tokens (measured with
# benchmarks/text_truncation.py on a loaded machine); small batches also run matmuls less efficiently. CUDA: an
# estimate, not measured here (kernel-launch bound: a pass of a 12-layer tower costs ms, ~1k tokens' work).
GROUP_OVERHEAD_TOKENS = {"cpu": 32.0, "cuda": 1024.0}


class UnsupportedTextTower(ExpectedError, TypeError):
    pass


class PromptTooLong(ExpectedError, ValueError):
    """A prompt needs more tokens than the text tower's context; the message names the class names."""


def context_text(classname: str, n_ctx: int) -> str:
    """The text of a learned-context prompt: n_ctx placeholder words (overwritten by `splice_context`), the name."""
    return f"{' '.join(['X'] * n_ctx)} {classname}." if n_ctx else f"{classname}."


def _listing(names: Sequence[str], counts: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(f"{n!r} ({c} tokens)" for n, c in list(zip(names, counts, strict=True))[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def plan_groups(lengths: Sequence[int], overhead: float) -> list[int]:
    """Split prompts into groups by length: returns the ascending cut lengths, one per group.

    A group holds every prompt whose length is in (previous cut, cut] and runs at length `cut`. The cuts minimise
    sum over groups (overhead + prompts in group * cut), exactly (dynamic programme over the distinct lengths).
    All lengths equal or a small batch -> one group (the single truncated pass).
    """
    counts: dict[int, int] = {}
    for length in lengths:
        counts[length] = counts.get(length, 0) + 1
    distinct = sorted(counts)
    if not distinct:
        return []
    # best[j]: cheapest cost of the lengths distinct[:j]; cut_from[j]: start of its last group.
    best = [0.0] + [float("inf")] * len(distinct)
    cut_from = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        n = 0
        for i in range(j, 0, -1):  # last group = distinct[i-1 .. j-1], run at length distinct[j-1]
            n += counts[distinct[i - 1]]
            cost = best[i - 1] + overhead + n * distinct[j - 1]
            if cost < best[j]:
                best[j], cut_from[j] = cost, i - 1
    cuts, j = [], len(distinct)
    while j > 0:
        cuts.append(distinct[j - 1])
        j = cut_from[j]
    return cuts[::-1]


class TextTower(nn.Module):
    """Frozen CLIP text tower that accepts token embeddings. Parameters never require grad."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer):
        super().__init__()
        # open_clip's CLIP keeps the text modules on the model itself; CustomTextCLIP keeps a TextTransformer
        # under `.text` with the same attribute names. HF-backed text towers have neither.
        src = model.text if hasattr(model, "text") else model
        missing = [
            a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final") if not hasattr(src, a)
        ]
        if missing:
            raise UnsupportedTextTower(
                f"{type(model).__name__} has no CLIP-style text transformer (missing {missing}); "
                "SHIP and CoOp need to feed token embeddings into it"
            )
        if getattr(src, "cls_emb", None) is not None or getattr(src, "use_pad_mask", False):
            raise UnsupportedTextTower(f"{type(model).__name__}: text towers with a CLS token or pad mask")
        self.token_embedding = src.token_embedding
        self.positional_embedding = src.positional_embedding
        self.transformer = src.transformer
        self.ln_final = src.ln_final
        self.text_projection = src.text_projection
        self.pool_type = getattr(src, "text_pool_type", None) or getattr(src, "pool_type", "argmax")
        self.eos_id = getattr(src, "text_eos_id", None) or getattr(src, "eos_id", None)
        if self.pool_type not in ("argmax", "eos"):
            raise UnsupportedTextTower(f"text pooling {self.pool_type!r}: only argmax/eos pooling is supported")
        self.register_buffer("attn_mask", src.attn_mask, persistent=False)
        # Skipping positions is exact only under a causal mask; a bidirectional tower always runs the full context.
        self.causal = self.attn_mask is not None and _is_causal(self.attn_mask)
        # The shared-prefix path runs the blocks itself: only for open_clip's standard block (the one every CLIP
        # text tower uses unless a config asks for qk-norm, scaled-cosine attention etc.); others run unshared.
        blocks = list(getattr(self.transformer, "resblocks", []))
        self.shares_prefix = self.causal and bool(blocks) and all(_plain_block(b) for b in blocks)
        self.tokenizer = tokenizer
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> TextTower:
        # The tower is frozen: it stays in eval mode whatever the enclosing module does.
        return super().train(False)

    @property
    def width(self) -> int:
        """Token-embedding dimension (the SHIP latent / prompt-vector size)."""
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    # --- prompts that fit ----------------------------------------------------------------------------------

    def overflowing(self, texts: Sequence[str]) -> dict[int, int]:
        """{index: tokens it needs (start and end included)} of the texts longer than the context."""
        texts, ctx = list(texts), self.context_length
        if not texts:
            return {}
        try:
            # One token more than the context: a text that fits ends before position ctx, one that does not is
            # cut there (the tokenizer puts its EOT at the last position).
            probe = self.tokenizer(texts, context_length=ctx + 1)
        except TypeError:  # a tokenizer without a context_length argument: cannot tell, trust it
            return {}
        over = (self.eot_positions(probe) >= ctx).nonzero().flatten().tolist()
        if not over:
            return {}
        long = max(1024, 8 * ctx)
        full = self.eot_positions(self.tokenizer([texts[i] for i in over], context_length=long)) + 1
        return dict(zip(over, full.tolist(), strict=True))

    def check_prompts_fit(self, classnames: Sequence[str], n_ctx: int, param: str = "n_ctx") -> None:
        """Every "[n_ctx context tokens] {name}." prompt fits the context, or PromptTooLong naming the class names
        (and `param`, the knob that set n_ctx) that do not."""
        over = self.overflowing([context_text(name, n_ctx) for name in classnames])
        if over:
            listing = _listing([classnames[i] for i in over], list(over.values()))
            raise PromptTooLong(
                f"{len(over)} class name(s) do not fit the text tower's {self.context_length}-token context with "
                f"{param}={n_ctx} context tokens (+ start, '.' and end tokens): {listing}; "
                f"shorten these class names or lower {param}"
            )

    def check_templates_fit(self, classnames: Sequence[str], templates: Sequence[str]) -> None:
        """Every template filled with every class name fits the context, or PromptTooLong naming them."""
        for template in templates:
            over = self.overflowing([template.format(name) for name in classnames])
            if over:
                names = [classnames[i] for i in over]
                raise PromptTooLong(
                    f"template {template!r} does not fit the text tower's {self.context_length}-token context for "
                    f"{len(over)} class name(s): {_listing(names, list(over.values()))}; shorten these class names "
                    "or the template"
                )

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)  # CLIP's EOT has the largest id in the vocabulary

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)

    # --- encoding token embeddings ---------------------------------------------------------------------------

    def encode_embeddings(
        self,
        x: torch.Tensor,
        eot: torch.Tensor,
        *,
        truncate: bool = True,
        group: bool = True,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Token embeddings [N, T, D] (+ EOT index per row) -> text features [N, E].

        truncate=False runs the full context (the reference computation); truncate=True skips every position
        after a row's EOT: with group=True rows run in groups of similar length (`plan_groups`), with group=False
        in one pass truncated at the longest EOT. All three agree up to float error.
        """
        return self._encode(None, x, eot, truncate=truncate, group=group, normalize=normalize)

    def encode_prompts(
        self,
        prompt_emb: torch.Tensor,
        eot: torch.Tensor,
        context: torch.Tensor,
        *,
        group: bool = True,
        share_prefix: bool = True,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Features of `prompt_emb` [N, T, D] (from `context_prompts`) with `context` spliced in at 1..L.

        Equals `encode_embeddings(splice_context(prompt_emb, context), eot)` up to float error. With one context
        [L, D] for all prompts (CoOp), the start token + context prefix is computed once and shared by every
        prompt; a per-prompt context [N, L, D] (SHIP's generator) is spliced and encoded row by row as usual.
        """
        n_ctx = context.shape[-2]
        shared = (
            share_prefix
            and self.shares_prefix
            and context.dim() == 2
            and prompt_emb.shape[0] > 1
            and not prompt_emb.requires_grad
            and bool((eot > n_ctx).all())  # every EOT lies after the prefix (always so for "X.. X {name}.")
            and torch.equal(prompt_emb[:, 0], prompt_emb[:1, 0].expand_as(prompt_emb[:, 0]))
        )
        if not shared:
            x = self.splice_context(prompt_emb, context)
            return self._encode(None, x, eot, truncate=True, group=group, normalize=normalize)
        prefix = torch.cat([prompt_emb[0, :1], context.to(prompt_emb.dtype)])  # [P, D]: start token + context
        return self._encode(prefix, prompt_emb[:, 1 + n_ctx :], eot, truncate=True, group=group, normalize=normalize)

    def _encode(
        self,
        prefix: torch.Tensor | None,
        x: torch.Tensor,
        eot: torch.Tensor,
        *,
        truncate: bool,
        group: bool,
        normalize: bool,
    ) -> torch.Tensor:
        """Rows x [N, T', D] follow the shared `prefix` [P, D] (None: P = 0); eot indexes prefix + row."""
        p = 0 if prefix is None else prefix.shape[0]
        if not (truncate and self.causal):
            feats = self._pool(self._run(None, x, None), eot)
        else:
            lengths = (eot + 1 - p).tolist()  # one host sync: the plan depends on the lengths
            overhead = GROUP_OVERHEAD_TOKENS.get(x.device.type, GROUP_OVERHEAD_TOKENS["cuda"])
            cuts = (plan_groups(lengths, overhead) if group else [max(lengths)]) if lengths else [1]
            keys = None if prefix is None else self._prefix_keys(prefix)
            if len(cuts) == 1:
                feats = self._pool(self._run(keys, x[:, : cuts[0]], p), eot - p)
            else:
                # Sort rows by length, run each group at its own length, put the features back in row order.
                order = torch.argsort(eot, stable=True)
                x_sorted, eot_sorted = x[:, : cuts[-1]].index_select(0, order), eot.index_select(0, order) - p
                sizes = torch.bucketize(eot_sorted + 1, torch.tensor(cuts, device=eot.device))
                sizes = torch.bincount(sizes, minlength=len(cuts)).tolist()
                feats = torch.cat(
                    [
                        self._pool(self._run(keys, xg[:, :cut], p), eg)
                        for xg, eg, cut in zip(x_sorted.split(sizes), eot_sorted.split(sizes), cuts, strict=True)
                        if len(xg)
                    ]
                )
                feats = feats.index_select(0, torch.argsort(order))
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                feats = self.text_projection(feats)
            else:
                feats = feats @ self.text_projection
        return F.normalize(feats, dim=-1) if normalize else feats

    def _run(self, keys: list[tuple[torch.Tensor, torch.Tensor]] | None, x: torch.Tensor, start: int | None):
        """Transformer + final LN over token embeddings x [N, L, D] at positions start..start+L-1.

        start=None: no truncation (full context, the tower's own mask). With `keys` (per block, the shared
        prefix's keys and values), the rows attend to the prefix too.
        """
        length = x.shape[1]
        first = 0 if start is None else start
        x = x + self.positional_embedding[first : first + length].to(x.dtype)
        if keys is None:
            mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
            return self.ln_final(self.transformer(x, attn_mask=mask))
        mask = self.attn_mask[first : first + length, : first + length].to(x.dtype)
        for block, (k, v) in zip(self.transformer.resblocks, keys, strict=True):
            x = _block_after_prefix(block, x, k, v, mask)
        return self.ln_final(x)

    def _prefix_keys(self, prefix: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, the keys and values [1, heads, P, head_dim] of the shared prefix's tokens."""
        p = prefix.shape[0]
        h = (prefix + self.positional_embedding[:p].to(prefix.dtype)).unsqueeze(0)
        mask = self.attn_mask[:p, :p]
        keys = []
        for block in self.transformer.resblocks:
            attn = block.attn
            _, k, v = F.linear(block.ln_1(h), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
            keys.append((_heads(k, attn.num_heads), _heads(v, attn.num_heads)))
            h = block(h, attn_mask=mask)
        return keys

    @staticmethod
    def _pool(x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        return x[torch.arange(x.shape[0], device=x.device), eot]

    def encode_tokens(self, tokens: torch.Tensor, *, truncate: bool = True, normalize: bool = True) -> torch.Tensor:
        return self.encode_embeddings(
            self.embed(tokens), self.eot_positions(tokens), truncate=truncate, normalize=normalize
        )

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                out.append(self.encode_tokens(self.tokenize(texts[i : i + batch_size])))
        return torch.cat(out)

    def zero_shot_classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """[C, E] classifier: per class, the renormalised mean of its normalised template features."""
        self.check_templates_fit(classnames, templates)
        texts = [t.format(c) for c in classnames for t in templates]
        feats = self.encode_texts(texts).view(len(classnames), len(templates), -1)
        classifier = F.normalize(feats.mean(dim=1), dim=-1)
        warn_coinciding_rows(classifier, classnames)
        return classifier

    # --- prompts with learned context -------------------------------------------------------------------

    def context_prompts(self, classnames: Sequence[str], n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of "X X .. X {name}." per class (X = placeholder for learned context).

        Returns (embeddings [C, T, D], eot [C]); positions 1..n_ctx are overwritten by `splice_context`.
        """
        self.check_prompts_fit(classnames, n_ctx)
        tokens = self.tokenize([context_text(name, n_ctx) for name in classnames])
        with torch.no_grad():
            emb = self.embed(tokens)
        return emb, self.eot_positions(tokens)

    @staticmethod
    def splice_context(prompt_emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Replace positions 1..L of `prompt_emb` [N, T, D] by `context` ([L, D] or [N, L, D])."""
        n = prompt_emb.shape[0]
        ctx = context.expand(n, -1, -1) if context.dim() == 3 else context.unsqueeze(0).expand(n, -1, -1)
        n_ctx = ctx.shape[1]
        return torch.cat([prompt_emb[:, :1], ctx.to(prompt_emb.dtype), prompt_emb[:, 1 + n_ctx :]], dim=1)

    def context_init(self, text: str, n_ctx: int, param: str = "") -> torch.Tensor:
        """Embeddings [n_ctx, D] of the first n_ctx tokens of `text` (CoOp's "a photo of a" init). A text of another
        length is a params error (`param`: the params section, e.g. "finetune.coop", named in the message)."""
        from pipeline.params import ParamsError

        tokens = self.tokenize([text])
        n_words = int(self.eot_positions(tokens)[0].item()) - 1
        if n_words != n_ctx:
            where = f"{param}." if param else ""
            raise ParamsError(
                f"{where}ctx_init: context init {text!r} has {n_words} tokens, but {where}n_ctx is {n_ctx}; make "
                "them agree (or set ctx_init to '' for a random init)"
            )
        with torch.no_grad():
            return self.embed(tokens)[0, 1 : 1 + n_ctx].clone()


def coinciding_rows(classifier: torch.Tensor, classnames: Sequence[str], tol: float = 1e-6) -> list[list[str]]:
    """Groups of class names whose (L2-normalised) classifier rows coincide: the classifier cannot tell them apart."""
    rows = F.normalize(classifier.detach().float().cpu(), dim=-1)
    close = (rows @ rows.T) >= 1.0 - tol
    groups, seen = [], set()
    for i in range(len(classnames)):
        if i in seen:
            continue
        members = close[i].nonzero().flatten().tolist()
        if len(members) > 1:
            groups.append([classnames[j] for j in members])
            seen.update(members)
    return groups


def warn_coinciding_rows(classifier: torch.Tensor, classnames: Sequence[str]) -> list[list[str]]:
    groups = coinciding_rows(classifier, classnames)
    if groups:
        listed = "; ".join(" = ".join(repr(n) for n in group) for group in groups[:5])
        more = f" and {len(groups) - 5} more group(s)" if len(groups) > 5 else ""
        log.warning(
            "classes with identical zero-shot classifier rows (indistinguishable by their prompts): %s%s; "
            "give them distinct class names",
            listed,
            more,
        )
    return groups


# --- the shared-prefix attention (open_clip's standard block only) ----------------------------------------------


def _is_causal(mask: torch.Tensor) -> bool:
    """True when the additive mask blocks exactly the future positions (CLIP's causal text mask)."""
    future = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return mask.dim() == 2 and bool((mask[future] == float("-inf")).all() and (mask[~future] == 0).all())


def _plain_block(block: nn.Module) -> bool:
    """open_clip's ResidualAttentionBlock around a plain packed-projection nn.MultiheadAttention, self-attention."""
    attn = getattr(block, "attn", None)
    return (
        type(block) is ResidualAttentionBlock
        and not hasattr(block, "ln_1_kv")
        and type(attn) is nn.MultiheadAttention
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, L, D] -> [N, heads, L, D / heads]."""
    n, length, d = t.shape
    return t.view(n, length, heads, d // heads).transpose(1, 2)


def _block_after_prefix(
    block: ResidualAttentionBlock, x: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """`block` on rows x [N, S, D] that follow a shared prefix whose keys/values [1, H, P, hd] are given.

    The same computation as ResidualAttentionBlock.forward on the full sequence, restricted to the rows' own
    positions: queries from the rows, keys and values from prefix + rows, `mask` [S, P + S] (causal).
    """
    attn = block.attn
    n, s, d = x.shape
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    k = torch.cat([k_prefix.expand(n, -1, -1, -1), _heads(k, heads)], dim=2)
    v = torch.cat([v_prefix.expand(n, -1, -1, -1), _heads(v, heads)], dim=2)
    out = F.scaled_dot_product_attention(_heads(q, heads), k, v, attn_mask=mask)
    out = attn.out_proj(out.transpose(1, 2).reshape(n, s, d))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))
