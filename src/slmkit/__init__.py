"""slmkit: make your own small language model.

    >>> import slmkit
    >>> slm = slmkit.load("smollm2-135m")
    >>> slmkit.save(slm, "my-model")
"""
from .errors import SlmError
from .models import SLM, load, save

__version__ = "0.1.0"
__all__ = ["SLM", "SlmError", "load", "save", "__version__"]
