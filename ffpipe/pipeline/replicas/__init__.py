"""Stage replicas (pipeline.replicas): R copies of a stage on R processes, each training on its
share of every batch and learning as the unreplicated stage does.

  topology.py  where every replica runs (ranks, stage by stage) and which rows of a batch it holds
  shards.py    messages cut into replica shards and joined back in row order
  fan.py       a stage process's inbox and outbox where replicas meet (fan-in, fan-out, the last
               stage's gathering into the evaluation sink)
  synced.py    what keeps replicas one learner: batch norm over the whole batch, summed gradients
  choice.py    how many replicas each stage gets (a list, or 'auto' balanced with the split)
Their process groups are made with every other group, in transport/groups.py.
"""
