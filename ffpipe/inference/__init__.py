"""A trained run, used: no training data needed (ffpipe.load_run is load.load_run).

  load.py      load_run(run, device): the run folder's newest complete step as one nn.Module
  network.py   TrainedNetwork: normalisation, every unit and head, the run's vote, predict with early exit
  votes.py     the vote rules (algo.vote) with evaluation's own arithmetic, and their early-exit form
  images.py    image files (PNG, JPEG, ...) read into the run's input shape
  predict.py   `ffpipe predict`: classes of image files as CSV
  export.py    `ffpipe export`: safetensors, ONNX, TorchScript files that load without ffpipe
  commands.py  the command line's predict and export (imports nothing heavy)
"""
