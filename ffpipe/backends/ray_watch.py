"""The Ray driver while an attempt runs: it waits on every stage actor's run(), routes the Ray
transport's references, draws progress, and at the first failure names the stage that failed
(with its node: a lost node shows as its actors dying) after recording every stage's report."""
from __future__ import annotations

import time

from ffpipe.telemetry.progress import Progress
from ffpipe.run import recovery

POLL_S = 0.5
FAILURE_GRACE_S = 3.0


def watch(cfg, setup, start, actors, runs: list, gpus: int, nodes: dict[int, str]) -> list[dict]:
    """Wait for every stage, routing references for the Ray transport, drawing progress, and
    stopping everything at the first failure with the failing stage named."""
    import ray

    from ffpipe.transport.ray import RefRouter

    router = None
    if cfg.pipeline.transport == "ray":
        router = RefRouter(actors, cfg.pipeline, gpus)
    progress = Progress(setup.plan.total_steps, setup.num_stages, cfg.run.progress)
    shown_results, last_poll, steps = 0, 0.0, [None] * len(actors)
    pending = list(runs)
    while pending:
        waiting = pending + (router.refs() if router else [])
        ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S)
        if any(ref in pending and failed(ref) for ref in ready):
            raise _first_failure(runs, steps, nodes, start)
        pending = [ref for ref in pending if ref not in ready]
        if router:
            router.advance()
        if time.monotonic() - last_poll > 1.0:
            last_poll = time.monotonic()
            shown_results = _draw(actors, progress, shown_results, steps, start.topology)
    _draw(actors, progress, shown_results, steps, start.topology)
    return ray.get(runs)


def failed(ref) -> bool:
    import ray

    try:
        ray.get(ref, timeout=0)
        return False
    except ray.exceptions.RayError:
        return True


def _first_failure(runs, steps: list, nodes: dict[int, str], start) -> recovery.StageFailed:
    """Every stage's failure, recorded; the root cause returned. Neighbours of a failed stage
    fail too (they lose it): a short grace lets the failed stage's own report arrive first.
    An actor that died is named with its node: where a node is lost, that is what shows it."""
    import ray

    ray.wait(runs, num_returns=len(runs), timeout=FAILURE_GRACE_S)
    failures = []
    for k, ref in enumerate(runs):
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.GetTimeoutError:
            continue
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if not isinstance(cause, recovery.StageFailed):  # the actor died without a report
                logged = f" after logging step {steps[k]}" if steps[k] else ""
                cause = recovery.StageFailed(start.topology.place(k).stage, None,
                                             f"the stage actor died{logged} (rank {k}, node {nodes[k]}): "
                                             f"{cause_of(err)}")
            failures.append(cause)
    primary = [f for f in failures if not f.secondary] or failures
    for failure in primary[:1] + [f for f in failures if f is not primary[0]]:
        recovery.record(start.folder, failure, start.attempt.number)
    return primary[0]


def cause_of(err) -> str:
    """The user-facing cause inside a Ray error: the stage's own exception message if it has one."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(err).strip().splitlines()[-1][:500]


def _draw(actors, progress: Progress, shown: int, steps: list, topology) -> int:
    import ray

    try:
        states = ray.get([a.progress.remote() for a in actors], timeout=5)
    except ray.exceptions.RayError:
        return shown  # a dead actor shows up in its run() result; progress is best effort
    for k, (step, rows, _) in enumerate(states):
        steps[k] = step  # the last step each actor logged: where a dead actor had got to
        if rows:  # only a stage's replica 0 logs
            progress.update(topology.place(k).stage, step, rows)
    results = states[topology.rank(topology.num_stages - 1)][2]
    for result in results[shown:]:
        progress.result(result)
    return len(results)
