"""TextTower: the one module that reaches into CLIP's text tower.

SHIP's generator and CoOp both feed *token embeddings* (learned context vectors spliced into a tokenized
prompt) through the frozen text transformer, which open_clip's `encode_text` cannot do. Everything that
touches the tower's internals (token embedding, positional embedding, causal mask, final LN, pooling at the
end-of-text token, projection) lives here and nowhere else.

Because the mask is causal, the feature pooled at the end-of-text (EOT) token depends only on positions up to
it, so we run the transformer only as far as the longest EOT position in the batch (`truncate=True`). The
result equals the full-context result up to float error and is several times cheaper for short prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class UnsupportedTextTower(TypeError):
    pass


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

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)  # CLIP's EOT has the largest id in the vocabulary

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens)

    def encode_embeddings(
        self, x: torch.Tensor, eot: torch.Tensor, *, truncate: bool = True, normalize: bool = True
    ) -> torch.Tensor:
        """Token embeddings [N, T, D] (+ EOT index per row) -> text features [N, E]."""
        length = int(eot.max().item()) + 1 if truncate else x.shape[1]
        x = x[:, :length]
        x = x + self.positional_embedding[:length].to(x.dtype)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        if self.text_projection is not None:
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

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
        texts = [t.format(c) for c in classnames for t in templates]
        feats = self.encode_texts(texts).view(len(classnames), len(templates), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)

    # --- prompts with learned context -------------------------------------------------------------------

    def context_prompts(self, classnames: Sequence[str], n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of "X X .. X {name}." per class (X = placeholder for learned context).

        Returns (embeddings [C, T, D], eot [C]); positions 1..n_ctx are overwritten by `splice_context`.
        """
        placeholder = " ".join(["X"] * n_ctx)
        tokens = self.tokenize([f"{placeholder} {name}." for name in classnames])
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

    def context_init(self, text: str, n_ctx: int) -> torch.Tensor:
        """Embeddings [n_ctx, D] of the first n_ctx tokens of `text` (CoOp's "a photo of a" init)."""
        tokens = self.tokenize([text])
        n_words = int(self.eot_positions(tokens)[0].item()) - 1
        if n_words != n_ctx:
            raise ValueError(f"context init {text!r} has {n_words} tokens, but n_ctx is {n_ctx}")
        with torch.no_grad():
            return self.embed(tokens)[0, 1 : 1 + n_ctx].clone()
