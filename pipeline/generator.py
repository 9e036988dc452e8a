"""SHIP's feature generator: a VAE whose decoder is CLIP's own frozen text tower.

    x (image feature) --E--> (mu, log_var) --z--> MLP --> r
    prompt = [p1 + r, ..., pL + r, tokens of "{classname}."] --frozen TextTower--> x~ (L2-normalised)

Only E, the bias MLP and the L global prompt vectors are trained. The tower is a submodule (so `.to()` moves
it) but it never requires grad, stays in eval mode, and is left out of `state_dict`: a checkpoint holds only
the trainable parts plus the config, and is re-attached to a tower on load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from pipeline.atomic_files import write_file_atomic
from pipeline.errors import ExpectedError
from pipeline.params.generator import GeneratorParams
from pipeline.text_tower import TextTower

CHECKPOINT_FORMAT = "ship-generator/2"
_TOWER = "tower."
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


class CheckpointMismatch(ExpectedError, ValueError):
    """A generator checkpoint does not fit the tower (or backbone) it is being loaded onto."""


@dataclass(frozen=True)
class GeneratorConfig:
    feature_dim: int  # CLIP image-feature dim (= the tower's output dim)
    width: int  # token-embedding dim of the tower = latent dim = prompt-vector dim
    prompt_length: int
    encoder_hidden: int
    bias_hidden: int
    bias_activation: str = "relu"  # "relu" | "leaky_relu" (LeakyReLU(0.2), SHIP's ImageNet generator)
    init_std: float = 0.02  # Linear weights ~ N(0, init_std), biases 0; prompt vectors ~ N(0, init_std)


class LossTerms(NamedTuple):
    total: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, kl_weight: float
) -> LossTerms:
    """SHIP's loss: squared error summed over dims + kl_weight * KL(q(z|x) || N(0, I)); both mean over batch."""
    rec = (recon.float() - target.float()).pow(2).sum(dim=-1).mean()
    kl = (-0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp()).sum(dim=-1)).mean()
    return LossTerms(rec + kl_weight * kl, rec, kl)


def tower_output_dim(tower: TextTower) -> int:
    """Feature dim the tower produces, found by encoding one prompt (no reaching into its internals)."""
    return int(tower.encode_texts(["x"]).shape[-1])


class ShipGenerator(nn.Module):
    def __init__(self, tower: TextTower, classnames: Sequence[str], config: GeneratorConfig):
        super().__init__()
        if config.width != tower.width:
            raise CheckpointMismatch(f"generator width {config.width} != text tower width {tower.width}")
        out_dim = tower_output_dim(tower)
        if out_dim != config.feature_dim:
            # The reconstruction is compared with the image feature, so both must live in the same space.
            raise CheckpointMismatch(f"image features are {config.feature_dim}-d, the text tower gives {out_dim}-d")
        self.config = config
        self.tower = tower
        d, h_e, h_b = config.width, config.encoder_hidden, config.bias_hidden
        if config.bias_activation not in _ACTIVATIONS:
            raise ValueError(f"bias_activation {config.bias_activation!r} is not one of {sorted(_ACTIVATIONS)}")
        # SHIP's reference: E = Linear-ReLU with separate mean and log-variance heads; the bias MLP
        # Linear-act-Linear; every Linear initialised N(0, 0.02) with zero bias, the prompts N(0, 0.02).
        self.encoder = nn.Sequential(nn.Linear(config.feature_dim, h_e), nn.ReLU())
        self.mean = nn.Linear(h_e, d)
        self.log_var = nn.Linear(h_e, d)
        self.bias_mlp = nn.Sequential(nn.Linear(d, h_b), _ACTIVATIONS[config.bias_activation](), nn.Linear(h_b, d))
        for layer in (*self.encoder, self.mean, self.log_var, *self.bias_mlp):
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, 0.0, config.init_std)
                nn.init.zeros_(layer.bias)
        self.prompts = nn.Parameter(torch.randn(config.prompt_length, d) * config.init_std)
        self.classnames: list[str] = []
        self.set_classnames(classnames)

    @classmethod
    def from_params(
        cls, tower: TextTower, classnames: Sequence[str], feature_dim: int, params: GeneratorParams
    ) -> ShipGenerator:
        """`params` resolved for a dataset (`Params.for_dataset`): no preset key left null."""
        if params.encoder_hidden is None or params.bias_activation is None:
            raise ValueError("generator params are not resolved for a dataset (encoder_hidden/bias_activation null)")
        config = GeneratorConfig(
            feature_dim=feature_dim,
            width=tower.width,
            prompt_length=params.prompt_length,
            encoder_hidden=params.encoder_hidden,
            bias_hidden=params.bias_hidden,
            bias_activation=params.bias_activation,
            init_std=params.init_std,
        )
        return cls(tower, classnames, config)

    # --- class set -----------------------------------------------------------------------------------------

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Cache the "X..X {name}." token embeddings [C, T, D] + EOT per class; labels index this list.

        Computed once per class set, not per step. The cache is trimmed to the longest EOT (+1): the tower
        truncates there anyway, so gathering a batch from it copies only the positions that matter.
        """
        if not classnames:
            raise ValueError("ShipGenerator needs at least one class name")
        self.tower.check_prompts_fit(classnames, self.config.prompt_length, "generator.prompt_length")
        emb, eot = self.tower.context_prompts(list(classnames), self.config.prompt_length)
        length = int(eot.max().item()) + 1
        # Non-persistent buffers: follow `.to(device)`, stay out of checkpoints (rebuilt from the names).
        self.register_buffer("class_emb", emb[:, :length].detach().clone(), persistent=False)
        self.register_buffer("class_eot", eot.detach().clone(), persistent=False)
        self.classnames = list(classnames)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def latent_dim(self) -> int:
        return self.config.width

    # --- the VAE -------------------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        # Listed explicitly, not filtered on requires_grad, so the tower can never sneak into an optimizer.
        return [
            *self.encoder.parameters(),
            *self.mean.parameters(),
            *self.log_var.parameters(),
            *self.bias_mlp.parameters(),
            self.prompts,
        ]

    def train(self, mode: bool = True) -> ShipGenerator:
        super().train(mode)
        self.tower.eval()  # frozen tower: eval whatever the generator's mode (TextTower enforces it too)
        return self

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x.to(self.prompts.dtype))
        return self.mean(h), self.log_var(h)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        # eps is drawn on the generator's device (CPU in practice) so a seed gives the same draw on any device.
        if generator is None:
            eps = torch.randn_like(mu)
        else:
            eps = torch.randn(mu.shape, generator=generator, device=generator.device, dtype=mu.dtype).to(mu.device)
        return mu + (0.5 * log_var).exp() * eps

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Latents [N, width] + class labels [N] (indices into `classnames`) -> L2-normalised features [N, E]."""
        labels = labels.to(self.class_eot.device)
        # One host sync (not two): an out-of-range label would otherwise be a device-side assert on CUDA.
        if labels.numel() and not bool(((labels >= 0) & (labels < self.num_classes)).all()):
            raise IndexError(f"labels must lie in [0, {self.num_classes}); got {labels.min()}..{labels.max()}")
        r = self.bias_mlp(z.to(self.prompts.dtype))
        context = self.prompts.unsqueeze(0) + r.unsqueeze(1)  # same r added to every global vector: [N, L, D]
        # Per-sample prompts: gather the cached class embeddings by label, splice, one truncated tower pass.
        prompt = self.tower.splice_context(self.class_emb[labels], context)
        return self.tower.encode_embeddings(prompt, self.class_eot[labels], truncate=True).float()

    def forward(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        *,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features [N, E] -> (reconstruction [N, E], mu, log_var). sample=False decodes the mean latent."""
        mu, log_var = self.encode(x)
        z = self.reparameterize(mu, log_var, generator) if sample else mu
        return self.decode(z, labels), mu, log_var

    def loss(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        *,
        kl_weight: float,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> LossTerms:
        recon, mu, log_var = self(x, labels, sample=sample, generator=generator)
        return vae_loss(recon, x, mu, log_var, kl_weight)

    # --- checkpointing (trainable parts only) --------------------------------------------------------------

    def state_dict(self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> dict[str, Any]:
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(prefix + _TOWER)]:
            del state[key]  # the frozen tower belongs to the backbone, not to this checkpoint
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(_TOWER)]
        unexpected = [k for k in result.unexpected_keys if not k.startswith(_TOWER)]
        if strict and (missing or unexpected):
            raise RuntimeError(f"ShipGenerator state mismatch: missing {missing}, unexpected {unexpected}")
        result.missing_keys[:] = missing
        result.unexpected_keys[:] = unexpected
        return result

    def save(self, path: str | Path, backbone: str) -> None:
        """Atomically write trainable weights + config + class names + the caller's backbone identity."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "backbone": backbone,
            "config": asdict(self.config),
            "classnames": list(self.classnames),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }
        write_file_atomic(path, lambda f: torch.save(payload, f))  # readers never see a half-written checkpoint

    @staticmethod
    def read_checkpoint(path: str | Path) -> dict[str, Any]:
        """The checkpoint's payload; anything but a plain-tensor generator checkpoint is a CheckpointMismatch."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointMismatch(f"generator checkpoint {path} does not exist; run the generator stage")
        try:
            # weights_only: a checkpoint is data; a pickle that would run code is refused, not executed.
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, empty, not a torch file, or a pickle with code in it
            reason = (str(err).strip().splitlines() or ["empty file" if path.stat().st_size == 0 else ""])[0]
            raise CheckpointMismatch(
                f"{path} is not a readable generator checkpoint ({type(err).__name__}: {reason}); "
                "rerun the generator stage"
            ) from None
        if not isinstance(payload, dict):
            raise CheckpointMismatch(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
        return payload

    @classmethod
    def load(cls, path: str | Path, tower: TextTower, *, expect_backbone: str | None = None) -> ShipGenerator:
        """Re-attach a saved generator to `tower` (placed on the tower's device, in eval mode)."""
        payload = cls.read_checkpoint(path)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatch(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format {payload.get('format')!r})")
        config = GeneratorConfig(**payload["config"])
        saved_backbone = payload["backbone"]
        if config.width != tower.width:
            raise CheckpointMismatch(
                f"{path}: generator was trained on backbone {saved_backbone!r} with token width {config.width}, "
                f"but the text tower given has width {tower.width}; load it onto the backbone it was trained on"
            )
        if expect_backbone is not None and expect_backbone != saved_backbone:
            raise CheckpointMismatch(f"{path}: trained on backbone {saved_backbone!r}, expected {expect_backbone!r}")
        model = cls(tower, payload["classnames"], config)
        model.load_state_dict(payload["state_dict"])
        return model.to(tower.device).eval()
