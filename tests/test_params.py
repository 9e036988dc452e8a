"""params.yaml and the pydantic schema are one: every key spelled out and validated; presets fill nulls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
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


# --- messages: the key path, the value found and what is allowed --------------------------------------------------


def _problems(*overrides: str) -> list[str]:
    with pytest.raises(ParamsError) as err:
        load_params(ROOT / "params.yaml", list(overrides))
    header, *lines = str(err.value).splitlines()
    assert header == f"invalid params in {ROOT / 'params.yaml'}:"
    return [line.strip() for line in lines]


TEMPLATE = "exactly one '{}' (the class name) and no other braces"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # A list whose only item fails gets one line (not also "Tuple should have at least 1 item after
        # validation, not 0"); a range error names both bounds of the range.
        ("extract.templates=['a photo']", f"extract.templates.0: a template must contain {TEMPLATE} (got 'a photo')"),
        (
            "extract.templates=['a {} {}']",
            f"extract.templates.0: a template must contain {TEMPLATE} (got 'a {{}} {{}}')",
        ),
        (
            "finetune.tip_adapter_f.templates=['{} and {}']",
            f"finetune.tip_adapter_f.templates.0: a template must contain {TEMPLATE} (got '{{}} and {{}}')",
        ),
        ("extract.templates=[3]", f"extract.templates.0: must be a string with {TEMPLATE} (got 3)"),
        (
            "extract.templates=[]",
            f"extract.templates: must be a list of at least 1 item, each a string with {TEMPLATE}, or null (got [])",
        ),
        (
            "seeds=[1180591620717411303424]",
            "seeds.0: must be an integer in [0, 2147483647] (got 1180591620717411303424)",
        ),
        ("seeds=[-1]", "seeds.0: must be an integer in [0, 2147483647] (got -1)"),
        (  # torch.manual_seed cannot take it: the demo backbone's pre-training failed with an overflow
            "demo.backbone.seed=1180591620717411303424",
            "demo.backbone.seed: must be an integer in [0, 2147483647] (got 1180591620717411303424)",
        ),
        ("seeds=['a']", "seeds.0: must be an integer in [0, 2147483647] (got 'a')"),
        ("seeds=[1.5]", "seeds.0: must be an integer in [0, 2147483647] (got 1.5)"),
        ("seeds=[]", "seeds: must be a list of at least 1 item, each an integer in [0, 2147483647] (got [])"),
        ("seeds=3", "seeds: must be a list of at least 1 item, each an integer in [0, 2147483647] (got 3)"),
        ("seeds=[1, 1]", "seeds: repeat a seed ([1]); each seed may be listed once (got [1, 1])"),
        (
            "seeds=[true]",
            "seeds: true/false where a number belongs; must be a list of at least 1 item, each an integer in "
            "[0, 2147483647] (got [True])",
        ),
        ("finetune.coop.lr=.nan", "finetune.coop.lr: must be a finite number > 0, or null (got nan)"),
        ("finetune.coop.lr=-1", "finetune.coop.lr: must be a number > 0, or null (got -1)"),
        ("finetune.coop.epochs=1.5", "finetune.coop.epochs: must be an integer >= 1, or null (got 1.5)"),
        (
            "finetune.coop.optimizer=rmsprop",
            "finetune.coop.optimizer: must be one of 'sgd', 'adam', 'adamw', or null (got 'rmsprop')",
        ),
        ("finetune.coop.ctx_init=3", "finetune.coop.ctx_init: must be a string (got 3)"),
        ("extract.views=1000", "extract.views: must be an integer in [0, 256] (got 1000)"),
        ("extract.crop_scale_min=0", "extract.crop_scale_min: must be a number in (0, 1] (got 0)"),
        ("extract.skip_corrupt=2", "extract.skip_corrupt: must be true or false (got 2)"),
        (
            "extract.block_size=300",
            "extract.block_size: must be an integer <= 256 or a multiple of 256 (shards hold whole 256-row chunks) "
            "(got 300)",
        ),
        (
            "finetune.methods=[coop, magic]",
            "finetune.methods.1: must be one of 'zeroshot', 'coop', 'coop_ship', 'clip_adapter', 'clip_adapter_ship', "
            "'tip_adapter_f', 'tip_adapter_f_ship', 'gda', 'gda_ship', 'kgcoop', 'kgcoop_ship', 'taskres', "
            "'taskres_ship', or a *_ship method + '_oracle' (e.g. 'coop_ship_oracle') (got 'magic')",
        ),
        (
            "finetune.tip_adapter_f.search_scale=[7]",
            "finetune.tip_adapter_f.search_scale: must be a list of exactly 2 items, each a number > 0.1, or null "
            "(got [7])",
        ),
        (
            "finetune.tip_adapter_f.search_steps=[0, 20]",
            "finetune.tip_adapter_f.search_steps.0: must be an integer >= 1 (got 0)",
        ),
        ("base_to_new.datasets=[1]", "base_to_new.datasets.0: must be a string (got 1)"),
        (
            "datasets.shapes.kind=zzz",
            "datasets.shapes.kind: must be one of 'demo', 'coop', 'imagefolder', 'xlsa17' (got 'zzz')",
        ),
        ("backbone=null", "backbone: must be a section with keys model, pretrained, device, cache_dir (got None)"),
        (
            "generator.typo=3",
            "generator.typo: unknown key (value 3); generator has keys prompt_length, encoder_hidden, bias_hidden, "
            "bias_activation, init_std, kl_weight, lr, weight_decay, batch_size, epochs, select",
        ),
    ],
)
def test_each_message_names_the_key_the_value_and_what_is_allowed(override, message):
    assert _problems(override) == [message]


def test_every_problem_of_a_file_gets_its_own_line():
    problems = _problems("seeds=[1, 1]", "base_to_new.datasets=[shapes, shapes, nope]")
    assert problems == [
        "seeds: repeat a seed ([1]); each seed may be listed once (got [1, 1])",
        "base_to_new.datasets lists ['shapes'] twice; each dataset may be listed once (got ['shapes', 'shapes', "
        "'nope'])",
        "base_to_new.datasets names 'nope', which is not in datasets (one of: shapes, patterns, zoo)",
    ]


@pytest.mark.parametrize("value", ["null", "''"])
def test_an_empty_or_null_coop_context_init_is_a_random_init(value, tiny_tower, monkeypatch):
    from pipeline.adapters import coop
    from tests.test_adapters import prompt_task

    params = load_params(ROOT / "params.yaml", [f"finetune.coop.ctx_init={value}", "finetune.coop.epochs=1"])
    assert params.finetune.coop.ctx_init == ""  # one spelling of "random" in every record of the params

    class Started(Exception):
        pass

    def first_context(module, *args, **kwargs):
        raise Started(module.ctx.detach().clone())

    monkeypatch.setattr(coop, "train", first_context)
    task, _ = prompt_task(tiny_tower)
    with pytest.raises(Started) as started:
        coop.CoOp(params.finetune.coop).fit(task, tiny_tower, seed=3)
    ctx = started.value.args[0]
    # CoOp's generic init: context vectors ~ N(0, 0.02^2), drawn from the fit's seed
    expected = 0.02 * torch.randn(4, tiny_tower.width, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ctx, expected)
