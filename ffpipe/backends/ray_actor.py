"""One pipeline stage as a Ray actor: it builds its part of the model and runs its stage loop.

Concurrency groups keep the stage loop apart from the small calls the driver makes while it runs:
`progress` (latest metrics) and, for the Ray transport, the mailbox's (transport/ray.py).
"""
from __future__ import annotations

import threading

import ray

from ffpipe import config as config_mod
from ffpipe.data import DataInfo
from ffpipe.run.setup import prepare, setup_process, stage_device
from ffpipe.run.start import RunStart
from ffpipe.run.stage_process import run_one_stage
from ffpipe.run.summary import stage_report
from ffpipe.transport import groups
from ffpipe.transport.ray import MAILBOX_GROUPS, RayMailbox

GROUPS = {"control": 1, **MAILBOX_GROUPS}


class StageWorker(RayMailbox):
    def __init__(self, cfg_tree: dict, rank: int, start: RunStart, info: DataInfo, transport: str):
        self.cfg = config_mod.from_dict(cfg_tree)
        setup_process(self.cfg)
        self.rank, self.start, self.transport = rank, start, transport
        self.topology = start.topology
        self.place = self.topology.place(rank)  # its stage and replica
        stage_id = self.stage_id = self.place.stage
        # Only stage 0 reads images (on its own node); the others build from the shared summary.
        self.setup = prepare(self.cfg, info=None if stage_id == 0 else info, starts=start.starts)
        self.device = stage_device(self.cfg, rank, local_rank=0)  # Ray shows each actor its GPU
        self.groups = groups.StageGroups(None)  # joined in join() (p2p transport, replicas)
        self.abort = threading.Event()
        self.open_mailbox(self.cfg.pipeline, stage_id, self.abort)  # the Ray transport's ends
        self.latest: tuple[int, list[dict]] = (0, [])
        self.results: list[dict] = []

    # -- start-up -----------------------------------------------------------------------------
    @ray.method(concurrency_group="control")
    def address(self) -> tuple[str, int]:
        """This node's address and a free port: stage 0 hosts the torch.distributed rendezvous."""
        host = ray.util.get_node_ip_address()
        return host, groups.free_port(host)

    @ray.method(concurrency_group="control")
    def join(self, host: str, port: int) -> None:
        timeout, world = self.cfg.pipeline.timeout_s, self.topology.world
        store, self._rendezvous_socket = groups.rendezvous_store(host, port, self.rank, world, timeout)
        control = groups.init_groups(self.device, timeout, self.rank, world, store=store)
        self.groups = groups.stage_groups(self.topology, self.place, control, channels=self.transport == "p2p")

    # -- the stage loop -----------------------------------------------------------------------
    def run(self) -> dict:
        try:
            logger, sink = run_one_stage(self.setup, self.start, self.place, self.device, self._link,
                                         self._note, self.results.append, self.groups.replica)
        except BaseException:
            self.abort.set()  # unblocks the mailbox calls waiting on this stage
            raise
        report = {**stage_report(logger), "node": ray.get_runtime_context().get_node_id()}
        return {"report": report, "rows": logger.rows, "history": sink.history if sink else None}

    def _link(self, peer: int):
        """The channel to the actor of rank `peer`."""
        if self.transport == "p2p":
            return self.groups.p2p_links(self.cfg.pipeline, self.topology, self.rank, self.device)(peer)
        return self.mailbox_link(peer, self.rank)  # the Ray transport (unreplicated)

    def _note(self, stage_id: int, step: int, rows: list[dict]) -> None:
        self.latest = (step, rows)

    @ray.method(concurrency_group="control")
    def progress(self) -> tuple[int, list[dict], list[dict]]:
        """(step, latest rows, evaluation results so far): polled by the driver."""
        step, rows = self.latest
        return step, rows, list(self.results)
