"""Stages and what crosses between them; never the run folder, never a backend.

  messages.py   the only things that cross a stage boundary
  stage.py      Stage: consecutive learners on one device, trained batch by batch
  graphed.py    a stage's training step replayed as one CUDA graph
  runtime.py    run_stage_loop: the one loop every backend runs, once per stage
  source.py     stage 0's inbox: the run's plan as a stream of messages
  sink.py       the last stage's outbox: evaluated batches turned into accuracies
  partition.py  units to stages (pure functions of measured costs)
  profile.py    the measured costs: each learner's step, stage 0's loader, the link between ranks
  sync.py       host syncs with a deadline
  replicas/     stage replicas: topology, shards, fan-in/out, synced norm and gradient sum, choice
"""
