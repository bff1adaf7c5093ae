"""The SFF algorithm: imports torch and the config only (never ray, never torch.distributed).

  goodness.py  the goodness head, the goodness kinds, the margin log-sum-exp loss, the votes and
               the boundary norm every unit applies to what it passes on
  unit.py      LocalUnit: a unit's body with its head; the detach at the unit boundary
  aux.py       the optional local terms (algo.aux): similarity matching, input reconstruction
  optim.py     the optimizer of a stage and the learning-rate schedule
"""
