"""Runs read back, as a person asks about them (no training code here):

  runs.py         `ffpipe runs [FOLDER]`: the run folders in a folder, a line each (status,
                  model, accuracy, img/s, steps); `ffpipe status RUN`: where one is now
  compare.py      `ffpipe compare RUN RUN...`: what differs in their configs, results side by side
  experiments.py  `ffpipe report RUN...`: the results table and one plot per experiment
"""
