"""The benchmark's peers on CPU (gloo, 2 processes under torchrun): DDP (plain, with activation
checkpointing, with gradient accumulation), GPipe, 1F1B, interleaved 1F1B and the zero-bubble
schedules each train steps of ffpipe's BP network that equal plain single-process BP steps on
the same batches from the same initial weights, with each batch cut as the peer cuts it (DDP's
shards and accumulation slices, the schedule's microbatches: batch norm sees those slices, so
they are part of the step)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ffpipe.bench.peers import load_config, train_batches
from ffpipe.bench.pipelining import available_schedules
from ffpipe.data import load_data
from ffpipe.ff.optim import build_optimizer
from ffpipe.learners import build_learners
from tests.helpers import REPO

pytestmark = pytest.mark.slow

# SGD, not AdamW: Adam's first step is about lr * sign(gradient) and would hide a gradient off by
# a constant factor (a missing 1/microbatches, say); SGD's step is the gradient itself.
SETS = ["model.name=small_cnn", "data.name=synthetic", "data.synthetic_train=64",
        "data.synthetic_test=16", "data.synthetic_shape=[3, 16, 16]", "train.batch_size=16",
        "train.device=cpu", "train.optimizer=sgd", "train.lr=0.1", "train.schedule=constant",
        "train.warmup_fraction=0"]


def run_peer(tmp_path, peer: str, microbatches: int = 1, steps: int = 1) -> dict:
    """`steps` steps of `peer` on 2 processes; the result and every rank's state dict after them."""
    out, prefix = tmp_path / f"{peer}.json", tmp_path / peer
    sets = [a for s in SETS for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "ffpipe.bench.peers", peer, "--microbatches", str(microbatches), "--warmup", "0",
           "--steps", str(steps), "--out", str(out), "--save-state", str(prefix), *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    result["states"] = [torch.load(f"{prefix}.rank{r}.pt") for r in range(2)]
    return result


def reference_step(slices: int, steps: int = 1) -> tuple[dict, float]:
    """Plain BP in this process: each of the first `steps` batches cut into `slices` equal parts,
    the gradient of each part's mean loss accumulated and divided by `slices`, an optimizer step;
    the state dict after the last and the last step's loss."""
    cfg = load_config(None, SETS)
    data = load_data(cfg.data, cfg.train.seed)
    batches = train_batches(cfg, data, torch.device("cpu"))
    network = build_learners(cfg, tuple(data.train.shape), len(data.train.classes))[0]
    optimizer = build_optimizer([{"params": list(network.parameters())}], cfg.train, torch.device("cpu"))
    for _ in range(steps):
        x, y = next(batches)
        losses = []
        for x_part, y_part in zip(x.tensor_split(slices), y.tensor_split(slices)):
            loss = network(x_part, (), y_part).loss
            (loss / slices).backward()
            losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return network.state_dict(), sum(losses) / slices


def check_figures(result: dict, peer: str, microbatches: int) -> None:
    assert (result["peer"], result["world_size"], result["microbatches"]) == (peer, 2, microbatches)
    assert result["batch"] == 16 and result["images_per_second"] > 0
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert len(result["peak_memory_mib"]) == 2 and min(result["peak_memory_mib"]) > 0


def test_ddp_step_equals_plain_bp_on_its_shards(tmp_path):
    result = run_peer(tmp_path, "ddp")
    check_figures(result, "ddp", 1)
    assert result["param_digests"][0] == result["param_digests"][1]  # the replicas agree exactly
    want, want_loss = reference_step(slices=2)
    params = dict(build_learners(load_config(None, SETS), (3, 16, 16), 10)[0].named_parameters())
    for name in params:  # parameters only: each rank's batch-norm statistics saw its own shard
        torch.testing.assert_close(result["states"][0][name], want[name], atol=1e-5, rtol=0)
    assert result["loss"] == pytest.approx(want_loss, abs=1e-5)


@pytest.mark.parametrize("peer, accumulation, slices", [("ddp-ckpt", 1, 2), ("ddp-accum", 2, 4)])
def test_checkpointed_and_accumulated_ddp_steps_equal_plain_bp_on_their_slices(tmp_path, peer, accumulation, slices):
    """Checkpointing recomputes the same forward; accumulation over 2 slices of each rank's
    shard is BP on 4 slices of the batch: both exact math, so parameters agree to fp32 rounding."""
    result = run_peer(tmp_path, peer, accumulation, steps=3)
    check_figures(result, peer, accumulation)
    assert result["param_digests"][0] == result["param_digests"][1]
    want, want_loss = reference_step(slices, steps=3)
    params = dict(build_learners(load_config(None, SETS), (3, 16, 16), 10)[0].named_parameters())
    for name in params:  # parameters only: the recomputation updates batch norm's statistics again
        torch.testing.assert_close(result["states"][0][name], want[name], atol=1e-6, rtol=0)
    assert result["loss"] == pytest.approx(want_loss, abs=1e-5)


PIPELINED = [("gpipe", 4, 1), ("1f1b", 2, 1), ("interleaved-1f1b", 2, 3), ("zb-interleaved", 2, 3), ("zbv", 4, 3)]


@pytest.mark.parametrize("peer, microbatches, steps", PIPELINED)
def test_pipelined_step_equals_plain_bp_on_its_microbatches(tmp_path, peer, microbatches, steps):
    if peer not in available_schedules():
        pytest.skip(f"torch {torch.__version__} has no {peer} schedule")
    result = run_peer(tmp_path, peer, microbatches, steps)
    check_figures(result, peer, microbatches)
    stage0, stage1 = result["states"]
    assert not set(stage0) & set(stage1)
    # ZBV's "V": rank 0 holds the first stage and the last (with the classifier)
    assert "classifier.weight" in (stage0 if peer == "zbv" else stage1)
    want, want_loss = reference_step(slices=microbatches, steps=steps)
    got = {**stage0, **stage1}
    assert set(got) == set(want)  # the stages together hold the whole network, under its names
    for name, tensor in want.items():  # weights and batch-norm statistics
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=0)
    assert result["loss"] == pytest.approx(want_loss, abs=1e-5)
