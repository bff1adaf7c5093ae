"""A run's life, cut by when things happen:

  setup.py          set-up and resume: the run's pieces, where it starts, per-process numerics
  stage_process.py  one stage process: open the stage, its inbox and outbox, run the loop
  folder.py         the run folder, the one owner of every path in it
  store.py          where its files live: a local folder or any filesystem pyarrow opens
  checkpoints.py    per-stage checkpoints: atomic writes, safe loads, the step to resume from
  recovery.py       failures: naming them, recording them, deciding whether to restart
  summary.py        the end: stage reports, summary.json, plots
  evaluate.py       `ffpipe eval`, on the same stage loop

Backends (ffpipe/backends) start the processes; everything a run does in them is here.
"""
