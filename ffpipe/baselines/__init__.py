"""Baselines that run on the same runtime as SFF: end-to-end backprop and classic Forward-Forward."""
