"""The shipped demo weights (data/demo/backbone/, in git) are what `make demo-weights` makes from this checkout.

provenance.json beside the weights records the recipe, the web corpus keys and a hash of the pre-training code they
were made with. When any of them changes without the weights being regenerated, these tests fail: regenerate them
(`make demo-weights`, then commit data/demo/backbone), or, for a change that provably leaves training bit for bit
unchanged (a refactor), re-export the existing weights with `ship pretrain-demo --from-checkpoint
data/demo/backbone/ship-demo-rn.safetensors --training-figures data/demo/backbone/provenance.json`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.backbone import load_backbone, state_digest
from pipeline.demo import weights
from pipeline.demo.pretrain import read_weights
from pipeline.params import BackboneParams, load_params

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / weights.SHIPPED_DIR
PARAMS = load_params(ROOT / "params.yaml")
MAX_BYTES = 30 * 2**20
REGENERATE = "regenerate the weights with `make demo-weights` and commit data/demo/backbone (see this file's docstring)"


@pytest.fixture(scope="module")
def provenance() -> dict:
    return weights.read_provenance(SHIPPED)


@pytest.fixture(scope="module")
def shipped(provenance: dict):
    params = BackboneParams(
        model=PARAMS.backbone.model, pretrained=str(ROOT / PARAMS.backbone.pretrained), device="cpu"
    )
    return load_backbone(params)


def test_default_params_name_the_shipped_weights(provenance: dict):
    assert Path(PARAMS.backbone.pretrained) == weights.SHIPPED_DIR / provenance["weights"]["file"]
    assert PARAMS.backbone.model == provenance["model"]


def test_recipe_is_the_one_the_weights_were_made_with(provenance: dict):
    current = PARAMS.demo.backbone.model_dump()
    assert provenance["recipe"] == current, (
        f"params.yaml demo.backbone is {current}, the shipped weights were trained with {provenance['recipe']}: "
        f"{REGENERATE}"
    )


def test_web_corpus_is_the_one_the_weights_saw(provenance: dict):
    current = weights.web_corpus_params(PARAMS.demo.world)
    recorded = {k: provenance["web_corpus"][k] for k in weights.WEB_CORPUS_KEYS}
    assert recorded == current, (
        f"params.yaml demo.world {current} renders another web corpus than {recorded}: {REGENERATE}"
    )


def test_pretraining_code_is_the_code_the_weights_were_made_with(provenance: dict):
    current, recorded = weights.code_hashes(), provenance["code"]["files"]
    changed = sorted(f for f in current.keys() | recorded.keys() if current.get(f) != recorded.get(f))
    assert not changed, (
        f"pre-training code changed since the shipped weights were made: {', '.join(changed)}; {REGENERATE}"
    )
    assert provenance["code"]["sha256"] == weights.code_digest(current)


def test_shipped_file_is_the_one_provenance_describes(provenance: dict):
    path = SHIPPED / provenance["weights"]["file"]
    assert path.stat().st_size == provenance["weights"]["bytes"] <= MAX_BYTES
    assert weights.file_sha256(path) == provenance["weights"]["sha256"], (
        f"{path} is not the file provenance.json describes"
    )
    state, recipe = read_weights(path)
    assert recipe == provenance["recipe"]
    assert {str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()} == {
        provenance["weights"]["dtype"]
    }


def test_shipped_weights_load_through_the_backbone_loader(provenance: dict, shipped):
    assert shipped.name == provenance["model"]
    assert shipped.weights_id == provenance["weights"]["weights_id"]  # what the feature stores record
    assert all(p.dtype == torch.float32 for p in shipped.model.parameters())
    scale = shipped.model.logit_scale.exp().item()
    assert scale == pytest.approx(provenance["quality"]["logit_scale"], abs=1e-3)


def test_float16_weights_give_the_same_features_however_they_are_stored(shipped, tmp_path: Path):
    """open_clip copies the float16 file into the float32 model; a float32 checkpoint of the same values (converted
    before loading) gives the very same model and features."""
    state, _ = read_weights(SHIPPED / weights.WEIGHTS_FILE)
    fp32 = tmp_path / "fp32.pt"
    torch.save({"state_dict": {k: v.float() if v.is_floating_point() else v for k, v in state.items()}}, fp32)
    other = load_backbone(BackboneParams(model=PARAMS.backbone.model, pretrained=str(fp32), device="cpu"))
    assert other.weights_id == shipped.weights_id == f"state-sha256:{state_digest(shipped.model)}"
    images = torch.rand(8, 3, shipped.image_size, shipped.image_size, generator=torch.Generator().manual_seed(0))
    tokens = shipped.tokenizer(["a photo of a red circle.", "a striped star", "a green snail"])
    with torch.no_grad():
        assert torch.equal(shipped.model.encode_image(images), other.model.encode_image(images))
        assert torch.equal(shipped.model.encode_text(tokens), other.model.encode_text(tokens))
