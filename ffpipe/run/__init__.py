"""A run's life, cut by when things happen:

  setup.py          set-up: the run's pieces (data, learners, split, replicas), per-process numerics
  start.py          where it starts: a new folder, or a run folder's newest complete step, on any layout
  stage_process.py  one stage process: open the stage, its inbox and outbox, run the loop
  folder.py         the run folder, the one owner of every path in it
  store.py          where its files live: a local folder or any filesystem pyarrow opens
  checkpoints.py    checkpoints keyed by unit: whole writes, CRC-checked loads, retention, the step
                    to resume from (legacy.py reads the earlier per-stage layout)
  recovery.py       failures: naming them, recording them, deciding whether to restart
  summary.py        the end: stage reports, summary.json, plots
  evaluate.py       `ffpipe eval`, on the same stage loop

Backends (ffpipe/backends) start the processes; everything a run does in them is here.
"""
