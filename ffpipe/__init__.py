"""ffpipe: a pipeline-parallel trainer for Scalable Forward-Forward and its baselines."""
__version__ = "0.1.0"
