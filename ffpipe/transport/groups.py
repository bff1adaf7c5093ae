"""Every torch.distributed process group of a pipeline, for torchrun ranks and Ray actors alike.

  default  NCCL between GPU stages, gloo on CPU (init_groups); torchrun's environment or a
           rendezvous store hosted by stage 0 (Ray: rendezvous_store) tells the ranks where to meet
  control  gloo: the p2p channels' headers and acknowledgements, and the objects rank 0 shares
  pairs    one group per pair of ranks with a channel between them (the channel's tensors)
  replica  the replicas of one stage (synced batch norm, gradient sums)
Creating a group is collective: every rank creates every group, in the same order.
"""
from __future__ import annotations

import datetime
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from ffpipe.config import PipelineConfig
from ffpipe.transport import open_channel
from ffpipe.pipeline.messages import Channel

TEARDOWN_S = 60.0  # the longest the end of a finished run waits for its process groups to close


def init_groups(device: torch.device, timeout_s: float, rank: int, world: int, store=None):
    """The default group (NCCL on GPU, gloo on CPU); returns the control group (None on CPU: the
    default group is gloo). Without a `store`, torchrun's environment tells the ranks where to meet."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return dist.new_group(backend="gloo") if backend == "nccl" else None


def socket_for(host: str) -> socket.socket:
    """A TCP socket of the family of `host` (an IPv6 address has colons)."""
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)


def free_port(host: str) -> int:
    """A port on `host` that nothing listens on now: where stage 0 hosts the rendezvous."""
    with socket_for(host) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rendezvous_store(host: str, port: int, rank: int, world: int, timeout_s: float):
    """Where stage processes started by Ray meet: a TCP store hosted by rank 0 on `host` only;
    returns (store, listening socket or None: the caller keeps it open as long as the store).
    (Given just an address, torch's store listens on every interface; a socket bound to the
    node's own address, 127.0.0.1 for a local cluster, keeps it there.)"""
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank != 0:
        return dist.TCPStore(host, port, world, False, timeout), None
    listener = socket_for(host)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen()
    store = dist.TCPStore(host, port, world, True, timeout, wait_for_workers=False,
                          master_listen_fd=listener.fileno())
    return store, listener


def replica_group(topology, place):
    """The process group of this rank's stage replicas (None when its stage has one)."""
    mine = None
    for stage in range(topology.num_stages):
        if topology.replicas[stage] > 1:
            group = dist.new_group(topology.stage_ranks(stage))
            mine = group if stage == place.stage else mine
    return mine


def pair_groups(topology) -> dict[tuple[int, int], object]:
    """A process group for each pair of ranks that exchange batches. On the default group NCCL
    runs all of a rank's sends and receives on one stream, one after another: a middle stage
    could not take in batch k+1 while its send of batch k waited for the next stage, and the
    stage before it waited in turn."""
    groups = {}
    for pair in topology.channel_pairs():
        group = dist.new_group(list(pair))
        if dist.get_rank() in pair:
            groups[pair] = group
    return groups


@dataclass
class StageGroups:
    """The groups one stage process uses besides the default one."""
    control: object                            # None on CPU: the default group is gloo
    replica: object = None                     # None: this rank's stage has one replica
    pairs: dict = field(default_factory=dict)  # (lower rank, higher rank) -> the pair's group

    def p2p_links(self, pipeline: PipelineConfig, topology, rank: int,
                  device: torch.device) -> Callable[[int], Channel]:
        """link(peer): the p2p channel between this rank and the rank `peer`."""
        def link(peer: int) -> Channel:
            data = self.pairs[(min(rank, peer), max(rank, peer))]
            return open_channel("p2p", pipeline, peer=peer, device=device, groups=(data, self.control),
                                peer_stage=topology.place(peer).stage)
        return link


def stage_groups(topology, place, control, channels: bool = True) -> StageGroups:
    """This rank's replica group and (`channels`: the p2p transport) its channels' pair groups."""
    return StageGroups(control, replica_group(topology, place), pair_groups(topology) if channels else {})


def share(obj, group=None):
    """Rank 0's `obj` on every rank (an exception from rank 0 is raised on every rank)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def destroy_groups(timeout_s: float = TEARDOWN_S) -> None:
    """Destroy the process groups, waiting at most `timeout_s`: the run is done and saved, and a
    teardown that blocks (NCCL waiting on something that will never come) must not hang it; the
    process ends with os._exit (cli.run), which stops the waiting thread."""
    done = threading.Event()
    threading.Thread(target=lambda: (dist.destroy_process_group(), done.set()), daemon=True).start()
    if not done.wait(timeout_s):
        print(f"ffpipe: warning: the process groups were not torn down within {timeout_s:g} s; "
              "leaving without it (the run itself is complete)", file=sys.stderr, flush=True)


def abort_groups() -> None:
    """Abort every process group without waiting for peers (NCCL: ncclCommAbort)."""
    if not dist.is_initialized():
        return
    try:
        dist.distributed_c10d._abort_process_group()
    except Exception:  # noqa: BLE001 - gloo cannot abort and needs not: the process exits next
        pass
