"""params.yaml and the pydantic schema are one: every key spelled out and validated; presets fill nulls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.params import ParamsError, load_params, parse_params, preset_keys
from pipeline.presets import PRESET_DIR, load_preset, preset_names

ROOT = Path(__file__).resolve().parents[1]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def _repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_params_file_spells_out_every_schema_key():
    # `dvc exp run -S key=value` can only set keys that exist in params.yaml, so the file lists them all.
    data = _repo_params()
    schema = load_params(ROOT / "params.yaml").model_dump(mode="json")
    assert _keys(data) == _keys(schema)


def test_preset_filled_keys_are_null_in_params_so_presets_apply():
    data = _repo_params()
    for key in preset_keys():
        node = data
        for part in key.split("."):
            node = node[part]
        assert node is None, f"{key} is set in params.yaml, so no dataset preset could ever apply"


def test_default_preset_resolves_every_preset_key_and_presets_only_set_nullable_keys():
    p = load_params(ROOT / "params.yaml")
    resolved = p.for_dataset("shapes").model_dump(mode="json")
    for key in preset_keys():
        node = resolved
        for part in key.split("."):
            node = node[part]
        assert node is not None, key
    nullable = set(preset_keys()) | {
        "finetune.tip_adapter_f.templates",
        "finetune.kgcoop.templates",
        "finetune.taskres.templates",
    }
    for name in preset_names():
        tree = load_preset(name)
        assert set(json.loads((PRESET_DIR / f"{name}.json").read_text())) - set(tree) <= {"source"}
        leaves = {k for k in _keys(tree) if not isinstance(_get(tree, k), dict)}
        assert leaves <= nullable, f"preset {name} sets keys params never leave null: {leaves - nullable}"


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


def _with_dataset(data: dict, name: str, spec: dict, experiment: str = "base_to_new") -> dict:
    data["datasets"][name] = spec
    data[experiment]["datasets"] = [*data[experiment]["datasets"], name]
    return data


def test_presets_fill_nulls_and_params_keep_the_last_word():
    data = _with_dataset(_repo_params(), "imnet", {"kind": "coop", "name": "imagenet", "root": "/data/imagenet"})
    p = parse_params(data)
    r = p.for_dataset("imnet")
    assert p.preset_name("imnet") == "imagenet"
    assert r.finetune.coop.epochs == 50 and r.finetune.clip_adapter.epochs == 50
    assert (r.finetune.coop_ship.optimizer, r.finetune.coop_ship.lr, r.finetune.coop_ship.epochs) == ("adamw", 1e-3, 20)
    assert r.generator.encoder_hidden == 4096 and r.generator.bias_activation == "leaky_relu"
    assert r.extract.templates == ("a photo of a {}.",) and len(r.finetune.tip_adapter_f.templates) == 7
    # The demo datasets take the default for what their preset leaves unset.
    d = p.for_dataset("shapes")
    assert d.finetune.coop.epochs == 200 and d.finetune.coop_ship.optimizer == "sgd" and d.generator.epochs == 50
    # A value set in params wins over the preset, for every dataset.
    data["finetune"]["coop"]["epochs"] = 7
    assert parse_params(data).for_dataset("imnet").finetune.coop.epochs == 7


def test_eurosat_and_pets_presets_carry_tip_adapter_settings():
    data = _with_dataset(_repo_params(), "euro", {"kind": "coop", "name": "eurosat", "root": "/d/eurosat"})
    data = _with_dataset(data, "pets", {"kind": "coop", "name": "oxford_pets", "root": "/d/pets"})
    p = parse_params(data)
    e, o = p.for_dataset("euro").finetune.tip_adapter_f, p.for_dataset("pets").finetune.tip_adapter_f
    assert (e.init_alpha, e.init_beta, e.search_scale, e.epochs) == (2.0, 1.0, (12.0, 10.0), 100)
    assert (o.init_alpha, o.search_scale, o.epochs) == (1.17, (7.0, 3.0), 20)
    assert p.for_dataset("pets").extract.templates == ("a photo of a {}, a type of pet.",)


def test_unknown_preset_and_a_preset_file_with_a_bad_key_are_named(tmp_path):
    data = _repo_params()
    data["datasets"]["shapes"]["preset"] = "nope"
    with pytest.raises(ParamsError, match="unknown preset 'nope'"):
        parse_params(data).for_dataset("shapes")
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps({"finetune": {"coop": {"epochz": 3}}}))
    data["datasets"]["shapes"]["preset"] = str(bad)
    with pytest.raises(ParamsError, match=r"mine\.json: key finetune\.coop\.epochz is not a params key"):
        parse_params(data).for_dataset("shapes")


def test_overrides_are_parsed_as_yaml_and_validated():
    p = load_params(ROOT / "params.yaml", ["seeds=[4, 5]", "generator.kl_weight=0.5"])
    assert p.seeds == (4, 5) and p.generator.kl_weight == 0.5
    with pytest.raises(ParamsError, match=r"seeds"):
        load_params(ROOT / "params.yaml", ["seeds=[]"])
    with pytest.raises(ParamsError, match="not of the form"):
        load_params(ROOT / "params.yaml", ["generator.epochs"])


def test_every_error_is_listed_with_its_key_path():
    data = _repo_params()
    data["extract"]["block_size"] = 300
    data["extract"]["templates"] = ["no slot"]
    data["finetune"]["methods"] = ["coop", "magic"]
    with pytest.raises(ParamsError) as err:
        parse_params(data)
    text = str(err.value)
    assert "extract.block_size" in text and "300" in text
    assert "extract.templates.0" in text and "no slot" in text
    assert "finetune.methods.1" in text and "magic" in text


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("finetune.tip_adapter_f.init_alpha=.inf", "finetune.tip_adapter_f.init_alpha"),
        ("generator.lr=.nan", "generator.lr"),
        ("extract.templates=['{} and {}']", "extract.templates.0"),
        ("extract.templates=['a {name}']", "extract.templates.0"),
        ("seeds=[1, 9223372036854775808]", "seeds.1"),
        ("seeds=[1, 1]", "repeat a seed"),
        ("seeds=[-1]", "seeds.0"),
    ],
)
def test_values_the_rngs_or_training_cannot_take_are_refused(override, named):
    with pytest.raises(ParamsError, match=named.replace(".", r"\.").replace("[", r"\[")):
        load_params(ROOT / "params.yaml", [override])


def test_experiments_must_name_listed_datasets_of_the_right_kind():
    data = _repo_params()
    data["base_to_new"]["datasets"] = ["shapes", "missing"]
    with pytest.raises(ParamsError, match=r"base_to_new\.datasets names 'missing', which is not in datasets"):
        parse_params(data)
    data = _repo_params()
    data["gzsl"]["datasets"] = ["zoo", "shapes"]
    with pytest.raises(ParamsError, match=r"gzsl\.datasets names 'shapes' .* needs an xlsa17 dataset"):
        parse_params(data)
    data = _repo_params()
    data["datasets"]["Bad-Name"] = {"kind": "demo", "root": "x"}
    data["base_to_new"]["datasets"].append("Bad-Name")
    with pytest.raises(ParamsError, match="dataset name 'Bad-Name' must match"):
        parse_params(data)
    data = _repo_params()
    data["cross_dataset"]["targets"] = []
    with pytest.raises(ParamsError, match="needs both sources and targets"):
        parse_params(data)


def test_missing_backbone_section_and_a_directory_for_params_are_named(tmp_path):
    with pytest.raises(ParamsError, match="backbone: required key is missing"):
        parse_params({})
    with pytest.raises(ParamsError, match="is a directory"):
        load_params(tmp_path)


def test_val_shots_default_follows_coop():
    p = load_params(ROOT / "params.yaml", ["fewshot.shots=2"])
    assert p.fewshot.resolved_val_shots == 2
    assert load_params(ROOT / "params.yaml").fewshot.resolved_val_shots == 4
    assert load_params(ROOT / "params.yaml", ["fewshot.val_shots=7"]).fewshot.resolved_val_shots == 7


def test_a_dataset_no_experiment_uses_is_a_warning_not_an_error(caplog):
    data = _repo_params()
    data["datasets"]["spare"] = {"kind": "demo", "root": "x"}
    with caplog.at_level("WARNING"):
        params = parse_params(data)
    assert "spare" in params.datasets
    assert "datasets ['spare'] are used by no experiment" in caplog.text
