"""The p2p channel between two real processes over gloo: exact delivery, order, bounds, failures."""
import multiprocessing as mp
import os
import time

import pytest
import torch
import torch.distributed as dist

from ffpipe.errors import PipelineError
from ffpipe.pipeline.messages import Message, Phase, control
from ffpipe.transport.p2p import P2PChannel, decode_header, encode_header
from tests.helpers import free_port




def messages():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last)
    skip = torch.randn(4, 3, 5, 5, generator=gen).to(torch.bfloat16)
    y = torch.tensor([1, 0, 2, 1])
    yield Message(Phase.TRAIN, 0, 7, x=x, skips=(skip,), y=y)
    yield Message(Phase.EVAL, 0, 0, x=x[:3], skips=(), y=y[:3], votes=torch.rand(3, 10, generator=gen),
                  unit_correct=torch.tensor([3, 1, 0]))
    yield control(Phase.EVAL_END, 0, 8)
    yield control(Phase.END, 0, 8)


def _rank(rank, port, scenario, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    peer = 1 - rank
    chan = P2PChannel(peer, peer, torch.device("cpu"), depth=2, timeout_s=3 if scenario == "silent" else 30)
    try:
        if scenario == "roundtrip":
            if rank == 0:
                for msg in messages():
                    chan.send(msg)
                chan.close()
            else:
                got = [chan.recv() for _ in range(4)]
                chan.close()
                results.put(("ok", [_flat(m) for m in got]))
        elif scenario == "dies":
            if rank == 1:
                os._exit(3)
            chan.recv()
        elif scenario == "silent":
            if rank == 1:
                time.sleep(8)
                return
            chan.recv()
    except PipelineError as err:
        results.put(("error", f"{err} [silent_rank={getattr(err, 'silent_rank', None)}]"))
    finally:
        if scenario == "roundtrip":
            dist.destroy_process_group()


def _flat(msg):
    return (msg.phase, msg.epoch, msg.step, [(t.dtype, t.shape, t.is_contiguous(), t.float().tolist())
                                             for t in msg.tensors()])


def _run(scenario):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, scenario, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = results.get(timeout=60)
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return out


def test_messages_arrive_exactly_and_in_order():
    status, got = _run("roundtrip")
    assert status == "ok"
    assert got == [_flat(m) for m in messages()]


def test_a_dead_neighbour_is_named_not_waited_for():
    status, text = _run("dies")
    assert status == "error" and "lost stage 1 (rank 1)" in text and "[silent_rank=None]" in text


def test_a_silent_neighbour_times_out_with_the_stage_named():
    t0 = time.time()
    status, text = _run("silent")
    assert status == "error" and "stage 1 (rank 1) sent nothing for 3 s" in text
    assert "[silent_rank=1]" in text  # what the torchrun launcher reads in failures.jsonl
    assert time.time() - t0 < 30


def test_header_round_trip_keeps_layout_and_dtypes():
    msg = next(messages())
    base, (layout, *specs) = decode_header(encode_header(msg))
    assert (base.phase, base.epoch, base.step) == (Phase.TRAIN, 0, 7)
    assert layout == (1, 1, 1, 0, 0)
    assert specs[0] == (torch.float32, True, (4, 3, 5, 5))
    assert specs[1] == (torch.bfloat16, False, (4, 3, 5, 5))


def test_a_message_too_big_for_the_header_is_refused():
    msg = Message(Phase.TRAIN, 0, 0, x=torch.zeros(1), skips=tuple(torch.zeros(1) for _ in range(9)))
    with pytest.raises(PipelineError, match="does not fit"):
        encode_header(msg)
