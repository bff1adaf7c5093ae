"""ffpipe: a pipeline-parallel trainer for Scalable Forward-Forward and its baselines."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """ffpipe.train and ffpipe.load_run, imported when first used: `import ffpipe` stays light
    (the command line answers a typo in a config before torch is imported)."""
    if name == "train":
        from ffpipe.api import train
        return train
    if name == "load_run":
        from ffpipe.inference.load import load_run
        return load_run
    raise AttributeError(f"module 'ffpipe' has no attribute {name!r}")
