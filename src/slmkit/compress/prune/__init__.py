"""Pruning: zero weights (magnitude, Wanda, SparseGPT; unstructured or N:M) or remove
structure (depth: decoder layers; width: attention heads and MLP channels).

``run_prune(model, out, PruneConfig(...))`` is the step the CLI and recipes call;
each method is also a plain function over a model in its own module.
"""
from .api import PruneConfig, parse_target, prune_model, run_prune

__all__ = ["PruneConfig", "run_prune", "prune_model", "parse_target"]
