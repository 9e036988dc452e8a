"""dvc.yaml and pipeline/layout.py tell the same story: every matrix instance's outs and deps are the layout's paths,
and the instances are exactly the (dataset, seed, target) combinations the params ask for."""

from __future__ import annotations

from pathlib import Path

import pytest
from dvc.repo import Repo

from pipeline.layout import Layout
from pipeline.params import load_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages() -> dict:
    with Repo(str(ROOT)) as repo:
        return {
            stage.addressing.split(":")[-1]: (
                {str(Path(o.def_path)) for o in stage.outs},
                {str(Path(d.def_path)) for d in stage.deps},
                stage.cmd,
            )
            for stage in repo.index.stages
        }


def _expected(params) -> dict[str, set[str]]:
    L = Layout()
    out: dict[str, set[str]] = {}
    for d in params.datasets:
        out[f"extract_eval@{d}"] = {str(L.eval_store(d))}
    for d in params.base_to_new.datasets:
        for s in params.seeds:
            key = f"{d}-{s}"
            out[f"b2n_extract@{key}"] = {str(L.train_store("base_to_new", d, s))}
            out[f"b2n_oracle_extract@{key}"] = {str(L.oracle_store(d, s))}
            out[f"b2n_generator@{key}"] = {
                str(L.generator("base_to_new", d, s)),
                str(L.generator_results("base_to_new", d, s)),
            }
            out[f"b2n_synthesize@{key}"] = {
                str(L.synthetic("base_to_new", d, s)),
                str(L.synthesis_results("base_to_new", d, s)),
            }
            out[f"b2n_finetune@{key}"] = {str(L.finetune_results("base_to_new", d, s))}
    for src in params.cross_dataset.sources:
        for s in params.seeds:
            key = f"{src}-{s}"
            out[f"xd_extract@{key}"] = {str(L.train_store("cross_dataset", src, s))}
            out[f"xd_generator@{key}"] = {
                str(L.generator("cross_dataset", src, s)),
                str(L.generator_results("cross_dataset", src, s)),
            }
            out[f"xd_source@{key}"] = {str(L.fits(src, s)), str(L.finetune_results("cross_dataset", src, s))}
            for t in params.cross_dataset.targets:
                tkey = f"{src}-{t}-{s}"
                out[f"xd_synthesize@{tkey}"] = {
                    str(L.synthetic("cross_dataset", src, s, t)),
                    str(L.synthesis_results("cross_dataset", src, s, t)),
                }
                out[f"xd_finetune@{tkey}"] = {str(L.finetune_results("cross_dataset", src, s, t))}
    for g in params.gzsl.datasets:
        out[f"gzsl_extract@{g}"] = {str(L.train_store("gzsl", g, 0))}
        for s in params.seeds:
            key = f"{g}-{s}"
            out[f"gzsl_generator@{key}"] = {str(L.generator("gzsl", g, s)), str(L.generator_results("gzsl", g, s))}
            out[f"gzsl_synthesize@{key}"] = {
                str(L.synthetic("gzsl", g, s)),
                str(L.synthesis_results("gzsl", g, s)),
            }
            out[f"gzsl_finetune@{key}"] = {str(L.finetune_results("gzsl", g, s))}
    return out


def test_every_matrix_instance_writes_the_layouts_paths(stages):
    expected = _expected(load_params(ROOT / "params.yaml"))
    instances = {name: outs for name, (outs, _, _) in stages.items() if "@" in name}
    assert set(instances) == set(expected)
    for name, outs in instances.items():
        assert outs == expected[name], name


def test_each_stage_depends_on_what_it_reads(stages):
    params = load_params(ROOT / "params.yaml")
    L = Layout()
    d, s = params.base_to_new.datasets[0], params.seeds[0]
    _, deps, cmd = stages[f"b2n_finetune@{d}-{s}"]
    assert {
        str(L.eval_store(d)),
        str(L.train_store("base_to_new", d, s)),
        str(L.generator("base_to_new", d, s)),
        str(L.synthetic("base_to_new", d, s)),
        str(L.oracle_store(d, s)),
    } <= deps
    assert cmd == f"python -m stages.finetune --protocol base_to_new --dataset {d} --seed {s}"
    src, t = params.cross_dataset.sources[0], params.cross_dataset.targets[0]
    _, deps, cmd = stages[f"xd_finetune@{src}-{t}-{s}"]
    assert {str(L.eval_store(t)), str(L.fits(src, s)), str(L.synthetic("cross_dataset", src, s, t))} <= deps
    assert f"--target {t}" in cmd
    _, deps, _ = stages["report"]
    assert "results" in deps
