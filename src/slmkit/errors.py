"""One exception type for everything a user can get wrong.

The CLI prints ``SlmError`` as a single line (``error: <what>. <fix>``) and
exits with code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations


class SlmError(Exception):
    """A problem with the user's input, with a hint on how to fix it.

    Args:
        what: what is wrong, naming the thing (file, field, model).
        fix: how to fix it; optional.
    """

    def __init__(self, what: str, fix: str | None = None):
        self.what = what.rstrip(".")
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.what}. {self.fix}" if self.fix else f"{self.what}."
