"""`ffpipe bench pipeline`'s plan: which runs a command line asks for, in which order."""
from ffpipe.bench import pipeline as bench


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
    gpipe, one_f_one_b = plan[-2], plan[-1]
    assert gpipe.microbatches == (2, 4)
    assert one_f_one_b.microbatches == (4,)  # 1F1B needs at least one microbatch per stage
