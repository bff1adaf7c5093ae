"""Transfer (init_from, frozen bodies) and the results report."""
import pytest
import torch

from ffpipe.backends import train
from ffpipe.errors import ConfigError
from ffpipe.reports.experiments import report
from tests.helpers import make_config
from tests.helpers.runs import newest_units


def _bodies(run_dir):
    state = {f"{u}.{k}": v for u, s in newest_units(run_dir)[1].items() for k, v in s["learner"].items()}
    return {k: v for k, v in state.items() if ".body." in k}, {k: v for k, v in state.items() if ".head." in k or "classifier" in k}


@pytest.mark.parametrize("algo", ["sff", "bp"])
def test_linear_probe_trains_heads_on_the_frozen_bodies_of_another_run(tmp_path, algo):
    source, _ = train(make_config(f"algo.name={algo}", "train.max_steps=4", f"run.dir={tmp_path / 'src'}",
                                  "run.experiment=pretrain"))
    probe, summary = train(make_config(f"algo.name={algo}", "train.max_steps=4", f"run.dir={tmp_path / 'probe'}",
                                       f"train.init_from={source}", "train.freeze_bodies=true",
                                       "data.synthetic_classes=5", "train.seed=7"))
    src_bodies, src_heads = _bodies(source)
    probe_bodies, probe_heads = _bodies(probe)
    assert src_bodies.keys() == probe_bodies.keys()
    # weights and batch-norm statistics are untouched; the heads (for 5 classes now) trained
    assert all(torch.equal(src_bodies[k], probe_bodies[k]) for k in src_bodies)
    assert all(v.shape[0] == 5 for k, v in probe_heads.items() if k.endswith("bias"))
    assert summary["completed"]


def test_fine_tuning_starts_from_the_other_runs_bodies_and_changes_them(tmp_path):
    source, _ = train(make_config("train.max_steps=4", f"run.dir={tmp_path / 'src'}"))
    tuned, _ = train(make_config("train.max_steps=4", f"run.dir={tmp_path / 'tuned'}", f"train.init_from={source}"))
    fresh, _ = train(make_config("train.max_steps=4", f"run.dir={tmp_path / 'fresh'}"))
    a, b, c = (_bodies(d)[0] for d in (source, tuned, fresh))
    conv = next(k for k in a if k.endswith("conv1.weight") or k.endswith("0.weight"))
    assert not torch.equal(a[conv], b[conv]) and not torch.equal(b[conv], c[conv])


def test_transfer_refuses_another_model(tmp_path):
    source, _ = train(make_config("train.max_steps=2", f"run.dir={tmp_path / 'src'}"))
    with pytest.raises(ConfigError, match="model.granularity is 'block', this run's 'layer'"):
        train(make_config("model.granularity=layer", f"train.init_from={source}", f"run.dir={tmp_path / 'x'}"))
    with pytest.raises(ConfigError, match="needs train.init_from"):
        make_config("train.freeze_bodies=true")


def test_report_table_and_plots(tmp_path):
    runs = [train(make_config(f"algo.name={a}", f"model.granularity={g}", "train.max_steps=3",
                              "run.experiment=synthetic-small", f"run.dir={tmp_path / (a + g)}"))[0]
            for a, g in (("sff", "block"), ("sff", "layer"), ("bp", "block"))]
    text = report(runs, tmp_path / "results.md", tmp_path / "plots")
    rows = [line for line in text.splitlines() if line.startswith("| synthetic-small")]
    assert len(rows) == 3
    assert any("small_cnn SFF hybrid" in r for r in rows) and any("small_cnn SFF pure" in r for r in rows)
    assert any("small_cnn BP" in r for r in rows)
    assert (tmp_path / "results.md").read_text().strip() == text.strip()
    assert (tmp_path / "plots" / "synthetic-small.png").stat().st_size > 1000
