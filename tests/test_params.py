from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_params_file_spells_out_every_schema_key():
    # `dvc exp run -S key=value` can only set keys that exist in params.yaml, so the file lists them all.
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    schema = load_params(ROOT / "params.yaml").model_dump(mode="json")
    assert _keys(data) == _keys(schema)


def test_overrides_are_parsed_as_yaml_and_validated():
    p = load_params(ROOT / "params.yaml", ["finetune.seeds=[4, 5]", "generator.kl_weight=0.5"])
    assert p.finetune.seeds == (4, 5) and p.generator.kl_weight == 0.5
    with pytest.raises(ParamsError, match=r"finetune\.seeds"):
        load_params(ROOT / "params.yaml", ["finetune.seeds=[]"])
    with pytest.raises(ParamsError, match="not of the form"):
        load_params(ROOT / "params.yaml", ["generator.epochs"])


def test_every_error_is_listed_with_its_key_path():
    with pytest.raises(ParamsError) as err:
        parse_params(
            {
                "backbone": {"model": "m", "pretrained": "p"},
                "extract": {"block_size": 300, "templates": ["no slot"]},
                "finetune": {"methods": ["coop", "magic"]},
            }
        )
    text = str(err.value)
    assert "extract.block_size" in text and "300" in text
    assert "extract.templates" in text and "no slot" in text
    assert "finetune.methods.1" in text and "magic" in text


def test_missing_backbone_section_is_named():
    with pytest.raises(ParamsError, match="backbone: required key is missing"):
        parse_params({})
