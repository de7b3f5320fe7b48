"""Models: the catalog, loading/saving, and the architecture table."""
from .io import SLM, count_params, load, save

__all__ = ["SLM", "count_params", "load", "save"]
