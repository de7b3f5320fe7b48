"""Private deployment: an OpenAI-compatible server with streaming, limits, auth and a chat page.

``slm serve MODEL`` runs :func:`serve`; :func:`create_app` builds the ASGI
app; :class:`BackgroundServer` runs one in a thread (tests, benchmarks).
"""
from .app import create_app, open_slots
from .config import ServeConfig, check_bind, is_loopback
from .run import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServeConfig", "check_bind", "create_app", "is_loopback",
           "open_slots", "serve"]
