"""`ffpipe bench pipeline`'s plan: which runs a command line asks for, in which order."""
import argparse

from ffpipe.bench import pipeline as bench
from ffpipe.bench import pipeline_batch


def test_replica_texts():
    assert bench.parse_replicas("2x2") == [2, 2]
    assert bench.parse_replicas("2,1,1") == [2, 1, 1]
    assert bench.parse_replicas("3xauto") == 3
    auto = bench.replica_run("3xauto", gpus=4)
    assert auto.nproc == 4 and "pipeline.stages=3" in auto.overrides and "pipeline.replicas=auto" in auto.overrides
    listed = bench.replica_run("2,1", gpus=4)
    assert listed.nproc == 3 and "pipeline.replicas=[2, 1]" in listed.overrides


def test_the_plan_puts_references_first_and_tries_only_the_microbatches_asked_for():
    plan = bench.runs([4], ray=True, gpus=4, peers=True, replicas=["2x2", "3xauto"], microbatches=(2, 4))
    names = [run.name for run in plan]
    assert names[:2] == ["bp, 1 GPU", "ddp, 4 GPUs"]  # every later row is a ratio to these
    assert [run.reference for run in plan[:2]] == ["bp", "ddp"]
    assert "sff torchrun, 2 stage(s) x [2, 2] replicas" in names
    assert "sff torchrun, 3 stages x auto replicas on 4 GPUs" in names
    assert [n for n in names if n.startswith("sff ray")] == ["sff ray p2p, 4 stages", "sff ray ray, 4 stages"]
    schedules = plan[-5:]
    assert [run.peer for run in schedules] == ["gpipe", "1f1b", "interleaved-1f1b", "zb-interleaved", "zbv"]
    assert schedules[0].microbatches == (2, 4)
    # the others need at least one microbatch per rank
    assert all(run.microbatches == (4,) and run.nproc == 4 for run in schedules[1:])


def test_the_plan_lists_the_ddp_variants_after_ddp_and_only_the_schedules_torch_has():
    plan = bench.runs([2], ray=False, gpus=2, peers=True, microbatches=(2, 4), schedules=("gpipe", "1f1b"))
    peers = [(run.peer, run.microbatches) for run in plan if run.peer]
    assert peers == [("ddp", (1,)), ("ddp-ckpt", (1,)), ("ddp-accum", (2, 4)), ("gpipe", (2, 4)), ("1f1b", (2, 4))]
    assert "ddp + activation checkpointing per unit, 2 GPUs" in [run.name for run in plan]
    assert not [run for run in bench.runs([2], ray=False, gpus=2, peers=False) if run.peer]


def test_model_shape_and_classes_become_config_keys():
    args = argparse.Namespace(model="small_cnn", shape=[1, 28, 28], classes=5)
    assert bench.model_data_overrides(args) == ["model.name=small_cnn", "data.name=synthetic",
                                                "data.synthetic_shape=[1, 28, 28]", "data.synthetic_classes=5"]
    assert bench.model_data_overrides(argparse.Namespace(model=None, shape=None, classes=None)) == []


def fake_measure(limit: int, tried: list):
    """A measure() that fits up to `limit` images and otherwise leaves an out-of-memory log."""
    def measure(args, run, i, out):
        batch = int(next(o for o in args.overrides if o.startswith("train.batch_size=")).split("=")[1])
        tried.append((batch, run.microbatches, run.overrides[-1]))
        if batch <= limit:
            return bench.Result(1000.0, ["", "", "", "", "", "1.0 / 1.0", ""])
        (out / "x.log").write_text("torch.OutOfMemoryError: CUDA out of memory")
        return bench.Result(None, [""] * 7, failure="failed (exit 1)")
    return measure


def test_the_largest_batch_search_doubles_then_bisects_in_whole_microbatches(tmp_path):
    args = argparse.Namespace(config=None, overrides=[], start_batch=64, max_batch=1 << 14, resolution=0.05)
    run = bench.Run("gpipe, 2 GPUs", "gpipe", 2, microbatches=(2, 4))
    tried = []
    found = pipeline_batch.search(args, run, lambda a, r, o: fake_measure(1000, tried)(a, r, 0, o), tmp_path)
    assert found["batch"] % 8 == 0 and 1000 - found["batch"] <= max(8, found["batch"] * 0.05)
    assert found["memory"] == "1.0 / 1.0" and tried[0][0] == 64
    assert all(mb == (4,) and sets == "train.max_steps=3" for _, mb, sets in tried)  # short trials at m=4


def test_the_search_stops_at_the_cap_and_names_other_failures(tmp_path):
    args = argparse.Namespace(config=None, overrides=[], start_batch=16, max_batch=48, resolution=0.05)
    run = bench.Run("ddp, 2 GPUs", "ddp", 2)
    found = pipeline_batch.search(args, run, lambda a, r, o: fake_measure(10**9, [])(a, r, 0, o), tmp_path)
    assert found["batch"] == 48
    failing = lambda a, r, o: bench.Result(None, [""] * 7, failure="failed (exit 1)")  # noqa: E731
    assert pipeline_batch.search(args, run, failing, tmp_path / "f")["failure"].startswith("failed (batch 16")
