"""Griffe extension: render the docstrings' doctest examples as highlighted code.

The docstrings put their examples after an `Example:` line and a blank line, unindented, as
`doctest` (and `tests/test_docs.py`) read them. Markdown would render those lines as a paragraph
and take a printed list such as `['a', 'b']` for a link, so each doctest block (a `>>>` line up to
the next blank line) is fenced as `pycon` before the docstring is parsed. The source files are not
changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_BLOCK = re.compile(r"(?m)^(?P<indent>[ \t]*)>>> .*(?:\n(?P=indent)(?!\s*$).*)*")


def fence_doctests(text: str) -> str:
    """Wraps every doctest block of `text` in a ```pycon fence at the block's indentation."""

    def fence(match: re.Match[str]) -> str:
        indent = match.group("indent")
        return f"{indent}```pycon\n{match.group(0)}\n{indent}```"

    return _BLOCK.sub(fence, text)


class DoctestFences(griffe.Extension):
    """Fences doctest blocks in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>> " in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
