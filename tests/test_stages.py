"""Every stage through the `ship` CLI on a tiny world: the three experiment families end to end, and the checks."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.feature_store import FeatureStore
from pipeline.layout import Layout
from stages.cli import app
from tests import tiny_world

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def _stage_commands(params: dict) -> list[list[str]]:
    """The DAG's commands in dependency order, as dvc.yaml's matrix expands them."""
    seeds = [str(s) for s in params["seeds"]]
    cmds = [["extract-eval", "-d", d] for d in params["datasets"]]
    for d in params["base_to_new"]["datasets"]:
        for s in seeds:
            common = ["--protocol", "base_to_new", "-d", d, "--seed", s]
            cmds += [["extract-train", *common], ["train-generator", *common]]
            cmds += [["synthesize", *common], ["finetune", *common]]
    for src in params["cross_dataset"]["sources"]:
        for s in seeds:
            common = ["--protocol", "cross_dataset", "-d", src, "--seed", s]
            cmds += [["extract-train", *common], ["train-generator", *common], ["finetune", *common]]
            for t in params["cross_dataset"]["targets"]:
                cmds += [["synthesize", *common, "--target", t], ["finetune", *common, "--target", t]]
    for g in params["gzsl"]["datasets"]:
        cmds.append(["extract-train", "--protocol", "gzsl", "-d", g])
        for s in seeds:
            common = ["--protocol", "gzsl", "-d", g, "--seed", s]
            cmds += [["train-generator", *common], ["synthesize", *common], ["finetune", *common]]
    return cmds


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    params = tiny_world.build(tmp)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    work = tmp / "work"
    for cmd in _stage_commands(params):
        _ok([*cmd, "-p", str(path), "--workdir", str(work)])
    _ok(["report", "-p", str(path), "--workdir", str(work), "--out", str(work / "reports")])
    return params, path, work


def test_every_protocol_writes_its_scores(ran):
    params, _, work = ran
    layout = Layout(work)
    methods = set(params.get("finetune", {}).get("methods", [])) or {
        "zeroshot",
        "coop",
        "coop_ship",
        "clip_adapter",
        "clip_adapter_ship",
        "tip_adapter_f",
        "tip_adapter_f_ship",
    }
    b2n = json.loads((layout.finetune_results("base_to_new", "alpha", 1) / "scores.json").read_text())
    assert set(b2n["methods"]) == methods
    assert {"base", "new", "hm"} <= set(b2n["methods"]["coop_ship"]["scores"])
    gz = json.loads((layout.finetune_results("gzsl", "gamma", 2) / "scores.json").read_text())
    assert {"seen", "unseen", "hm"} <= set(gz["methods"]["tip_adapter_f_ship"]["scores"])
    src = json.loads((layout.finetune_results("cross_dataset", "alpha", 1) / "scores.json").read_text())
    assert set(src["methods"]) == {m for m in methods if not m.endswith("_ship")}
    xd = json.loads((layout.finetune_results("cross_dataset", "alpha", 1, "beta") / "scores.json").read_text())
    assert set(xd["methods"]) == methods
    assert set(xd["methods"]["coop_ship"]["scores"]) == {"source", "beta"}
    assert set(xd["methods"]["coop"]["scores"]) == {"beta"}
    # Per test image, right or wrong: the source fits scored on the target sit beside the *_ship methods' rows.
    rows = pl.read_parquet(layout.finetune_results("cross_dataset", "alpha", 1, "beta") / "predictions.parquet")
    assert set(rows.columns) == {"split", "image", "label"} | methods
    target = rows.filter(pl.col("split") == "beta")
    assert target["coop"].null_count() == 0 and target["coop_ship"].null_count() == 0
    assert 100 * target["coop"].mean() == pytest.approx(xd["methods"]["coop"]["scores"]["beta"], abs=1e-3)
    assert rows.filter(pl.col("split") == "source")["coop"].null_count() == len(
        rows.filter(pl.col("split") == "source")
    )
    gz_rows = pl.read_parquet(layout.finetune_results("gzsl", "gamma", 2) / "predictions.parquet")
    assert set(gz_rows["split"].unique()) == {"seen", "unseen"}
    projection = pl.read_csv(layout.synthesis_results("base_to_new", "alpha", 1) / "projection.csv")
    assert set(projection["kind"]) == {"real", "synthetic"}


def test_report_aggregates_every_family(ran):
    _, _, work = ran
    reports = work / "reports"
    b2n = json.loads((reports / "metrics" / "base_to_new.json").read_text())
    assert set(b2n) == {"average", "alpha", "beta"}
    assert {"base", "base_std", "new", "new_std", "hm", "hm_std"} <= set(b2n["alpha"]["coop"])
    xd = json.loads((reports / "metrics" / "cross_dataset.json").read_text())
    assert {"source", "beta", "target_average"} <= set(xd["alpha"]["coop_ship"])
    gz = json.loads((reports / "metrics" / "gzsl.json").read_text())
    assert {"unseen", "seen", "hm"} <= set(gz["gamma"]["zeroshot"])
    for table in ("base_to_new.md", "cross_dataset.md", "gzsl.md", "generator.md"):
        assert "| CoOp + SHIP |" in (reports / table).read_text() or table == "generator.md"
    assert (reports / "plots" / "val_acc" / "base_to_new-alpha-coop.csv").exists()
    headline = json.loads((reports / "metrics" / "headline.json").read_text())
    assert set(headline) == {"b2n", "xd", "gzsl"} and {"new", "H"} == set(headline["b2n"]["coop_ship"])
    claims = (reports / "claims.md").read_text()
    assert "| CoOp + SHIP > CoOp |" in claims and "seeds × images" in claims
    for figure in ("base_to_new", "cross_dataset", "gzsl", "synthetic_pca", "generator_loss/gzsl-gamma"):
        assert (reports / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG")


def test_stores_hold_what_each_stage_needs(ran):
    params, _, work = ran
    layout = Layout(work)
    ev = FeatureStore.open(layout.eval_store("gamma"), kind="eval")
    assert ev.meta["seen"] == [0, 1, 2] and ev.meta["unseen"] == [3, 4]
    train = FeatureStore.open(layout.train_store("base_to_new", "alpha", 1), kind="train")
    feats = train.split("train")
    assert feats.features.shape[1] == 1 + params["extract"]["views"]  # clean + augmented views
    assert set(feats.labels.tolist()) == {0, 1, 2}  # base classes only
    assert feats.norms is not None and (feats.norms > 0).all()
    syn = FeatureStore.open(layout.synthetic("cross_dataset", "alpha", 1, "beta"), kind="synthetic")
    assert syn.meta["classes"] == [0, 1, 2, 3] and syn.classnames == tiny_world.BETA
    # No absolute path of the checkout in any store's metadata: bytes must not depend on where the repo lives.
    for path in (layout.eval_store("alpha"), layout.train_store("cross_dataset", "alpha", 2)):
        assert str(work) not in json.dumps(FeatureStore.open(path).meta)


def test_a_seed_outside_params_and_a_missing_target_store_are_refused(ran):
    _, path, work = ran
    result = runner.invoke(app, ["finetune", "--protocol", "gzsl", "-d", "gamma", "--seed", "9", "-p", str(path)])
    assert result.exit_code == 2 and "seed 9 is not in params seeds" in result.output
    empty = work.parent / "empty"
    args = ["finetune", "--protocol", "base_to_new", "-d", "alpha", "--seed", "1", "-p", str(path), "--workdir"]
    result = runner.invoke(app, [*args, str(empty)])
    assert result.exit_code == 1 and "no feature store at" in result.output and "Traceback" not in result.output


def test_cli_help_explains_every_command():
    result = runner.invoke(app, ["--help"])
    for command in ("extract-eval", "extract-train", "train-generator", "synthesize", "finetune", "report"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "--params" in sub.output and "--set" in sub.output


def test_protocol_names_match_the_layout():
    assert {p.value for p in __import__("stages.cli", fromlist=["ProtocolName"]).ProtocolName} == {
        "base_to_new",
        "cross_dataset",
        "gzsl",
    }
    assert Path(Layout().eval_store("x")) == Path("data/features/x/eval.zarr")


def test_oracle_rows_train_on_real_new_class_features_in_base_to_new_only(ran, tmp_path):
    """`*_ship_oracle`: the *_ship method with real few-shot features of the new classes (the same seed's draw,
    train images only) in place of synthetic ones; other protocols skip it."""
    import shutil

    _, path, work = ran
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    layout = Layout(copy)
    methods = "finetune.methods=[zeroshot,coop_ship,coop_ship_oracle,tip_adapter_f_ship_oracle]"
    _ok(["extract-oracle", "-d", "alpha", "--seed", "1", "-p", str(path), "--workdir", str(copy)])
    oracle = FeatureStore.open(layout.oracle_store("alpha", 1), kind="train")
    assert set(oracle.split("train").labels.tolist()) == {3, 4, 5}  # alpha's new classes
    assert oracle.meta["labeled"] == [3, 4, 5] and oracle.meta["draw"]["seed"] == 1
    common = ["--seed", "1", "-p", str(path), "--workdir", str(copy), "-S", methods]
    _ok(["finetune", "--protocol", "base_to_new", "-d", "alpha", *common])
    b2n = json.loads((layout.finetune_results("base_to_new", "alpha", 1) / "scores.json").read_text())
    assert list(b2n["methods"]) == ["zeroshot", "coop_ship", "coop_ship_oracle", "tip_adapter_f_ship_oracle"]
    assert {"base", "new", "hm"} <= set(b2n["methods"]["coop_ship_oracle"]["scores"])
    import polars as pl

    curves = pl.read_csv(layout.finetune_results("base_to_new", "alpha", 1) / "curves.csv")
    loss = {
        m: curves.filter(pl.col("method") == m)["train_loss"].drop_nulls().to_list()
        for m in ("coop_ship", "coop_ship_oracle")
    }
    assert loss["coop_ship"] != loss["coop_ship_oracle"]  # the same recipe and seed, other features of the new classes
    _ok(["finetune", "--protocol", "gzsl", "-d", "gamma", *common])
    gz = json.loads((layout.finetune_results("gzsl", "gamma", 1) / "scores.json").read_text())
    assert list(gz["methods"]) == ["zeroshot", "coop_ship"]
