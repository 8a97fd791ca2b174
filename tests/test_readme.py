"""Every Python block in README.md runs, so the documentation cannot drift from the code.

A `print(...)` whose comment shows a Python value, on the same line (`print(x)  # ['a', 'b']`) or
on the `#` lines right after it, must print exactly that value. A comment that is not a value
(`# at most 4 models, newest last`) is prose about output that varies between runs.
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def claimed_outputs(block: str) -> dict[int, str]:
    """Line number of each top-level `print(` -> the output its comment shows (values only)."""
    lines = block.splitlines()
    claims = {}
    for number, line in enumerate(lines, start=1):
        if not line.startswith("print("):
            continue
        code, _, comment = line.partition("  #")
        parts = [comment.strip()] if comment.strip() else []
        following = number  # lines[following] is the line after `number`
        while following < len(lines) and lines[following].startswith("#"):
            parts.append(lines[following][1:].strip())
            following += 1
        text = " ".join(parts)
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue  # prose, not a value
        claims[number] = text
    return claims


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


def test_readme_shows_printed_values_to_check():
    assert sum(len(claimed_outputs(block)) for block in BLOCKS) >= 2


def test_claimed_outputs_are_found_on_the_line_and_on_the_lines_after():
    block = "print(x)  # [1, 2]\nprint(y)\n# {'a': 1,\n#  'b': 2}\nprint(z)  # some prose\n"
    assert claimed_outputs(block) == {1: "[1, 2]", 2: "{'a': 1, 'b': 2}"}


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write relative paths such as runs/exp1
    source = f"README.md python block {index + 1}"
    printed: dict[int, list[str]] = {}

    def recording_print(*args, **kwargs):
        frame = sys._getframe(1)
        if frame.f_code.co_filename == source and kwargs.get("file") is None:
            out = io.StringIO()
            builtins.print(*args, **{**kwargs, "file": out})
            printed.setdefault(frame.f_lineno, []).append(out.getvalue())
        builtins.print(*args, **kwargs)

    code = compile(BLOCKS[index], source, "exec")
    exec(code, {"__name__": f"readme_block_{index + 1}", "print": recording_print})
    for line, claim in claimed_outputs(BLOCKS[index]).items():
        [output] = printed.get(line, [None])
        assert output is not None, f"{source}, line {line} printed nothing"
        assert ast.literal_eval(output.strip()) == ast.literal_eval(claim), (
            f"{source}, line {line}: the README says it prints {claim}, it printed {output!r}"
        )
