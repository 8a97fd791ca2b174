"""Every Python block of README.md and docs/ runs, so the documentation cannot drift from the code.

The blocks of one page run in order, in one namespace and one fresh working directory, as a reader
would run them. A `print(...)` whose comment shows a Python value, on the same line
(`print(x)  # ['a', 'b']`) or on the `#` lines right after it, must print exactly that value. A
comment that is not a value (`# at most 4 models, newest last`) is prose about output that varies
between runs.

A block may carry a marker on the line before its fence:

- `<!-- docs-test: s3 -->`: it runs against the S3 server of `tests/s3_server.py` (its bucket
  `my-bucket` is created first).
- `<!-- docs-test: jax -->`: it needs JAX before JAX starts (forced CPU devices): the page's
  `jax` blocks run in order in one fresh Python process (`test_jax_blocks_run`), skipped only
  where JAX is not installed; with JAX, a missing orbax-checkpoint fails.
- `<!-- docs-test: not run: WHY; tests/FILE.py::TEST HOW -->`: it cannot run in one process (a
  multi-worker job). The named test must exist, and such blocks must stay rare.
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["s3_server"]

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MAX_NOT_RUN = 2
S3_BUCKET = "my-bucket"

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!-- docs-test: (.*?) -->\s*\Z", re.S)
_NOT_RUN = re.compile(r"not run: .+; (tests/[\w/]+\.py)::(test_\w+) ", re.S)


@dataclass
class Block:
    page: Path
    line: int  # of the fence
    language: str
    code: str
    marker: str | None

    @property
    def source(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line + 1}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        marker = _MARKER.search(before.rstrip("\n").rsplit("\n", 1)[-1] + "\n")
        found.append(
            Block(
                page=page,
                line=before.count("\n"),
                language=match.group(1),
                code=match.group(2),
                marker=marker.group(1).strip() if marker else None,
            )
        )
    return found


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b.language == "python"]
RUN_PAGES = sorted(
    {b.page for b in PYTHON if not (b.marker or "").startswith("not run")},
    key=lambda p: str(p),
)


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


def printed_matches(output: str, claim: str) -> bool:
    """`print(value)` shows `value` as written in the comment; a string prints without quotes."""
    expected = ast.literal_eval(claim)
    text = output.rstrip("\n")
    if isinstance(expected, str) and text == expected:
        return True
    try:
        return ast.literal_eval(text.strip()) == expected
    except (ValueError, SyntaxError):
        # Several values (`print(a, b)`): compare the printed words with the claimed tuple's.
        return isinstance(expected, tuple) and text.split() == [str(v) for v in expected]


def test_the_docs_have_python_examples():
    assert len(PYTHON) >= 15
    assert sum(len(claimed_outputs(b.code)) for b in PYTHON) >= 8


def test_claimed_outputs_are_found_on_the_line_and_on_the_lines_after():
    block = "print(x)  # [1, 2]\nprint(y)\n# {'a': 1,\n#  'b': 2}\nprint(z)  # some prose\n"
    assert claimed_outputs(block) == {1: "[1, 2]", 2: "{'a': 1, 'b': 2}"}


def test_printed_values_compare_as_python_values():
    assert printed_matches("['a', 'b']\n", "['a', 'b']")
    assert printed_matches("Invalid value\n", "'Invalid value'")
    assert printed_matches("model 10 0\n", "('model', 10, 0)")
    assert not printed_matches("model 9 0\n", "('model', 10, 0)")
    assert not printed_matches("[1]\n", "[2]")


def test_python_code_is_fenced_as_python():
    """A block fenced `py`, `python3` or `pycon` would escape the runner below."""
    odd = [b.source for b in ALL if b.language in ("py", "python3", "pycon", "ipython")]
    assert not odd, f"fence these as ```python: {odd}"


def test_every_marker_is_known_and_blocks_not_run_stay_rare():
    not_run = []
    for b in ALL:
        if b.marker is None or b.marker in ("s3", "jax"):
            continue
        assert b.language == "python", f"{b.source}: a docs-test marker on a {b.language} block"
        match = _NOT_RUN.match(b.marker)
        assert match, f"{b.source}: unknown marker {b.marker!r}"
        path, test = match.groups()
        assert (ROOT / path).is_file(), f"{b.source}: {path} does not exist"
        assert f"def {test}(" in (ROOT / path).read_text(), f"{b.source}: no {test} in {path}"
        not_run.append(b.source)
    assert len(not_run) <= MAX_NOT_RUN, f"too many blocks that do not run: {not_run}"


@pytest.fixture
def op_determinism_restored():
    """A page may turn on TensorFlow's op determinism (docs/resume.md does, as a reader should);
    it stays on for the rest of the process, where `tf.random.get_global_generator()` then refuses
    to create the global generator. Put it back as it was for the tests that run next."""
    import keras

    if keras.backend.backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework import config  # the only switch back (no public one)

    was_on = config.is_op_determinism_enabled()
    yield
    if not was_on:
        config.disable_op_determinism()


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
@pytest.mark.usefixtures("op_determinism_restored")
def test_page_python_blocks_run(page, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # blocks write relative paths such as runs/exp1
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    printed: dict[tuple[str, int], list[str]] = {}

    def recording_print(*args, **kwargs):
        frame = sys._getframe(1)
        if kwargs.get("file") is None:
            out = io.StringIO()
            builtins.print(*args, **{**kwargs, "file": out})
            printed.setdefault((frame.f_code.co_filename, frame.f_lineno), []).append(
                out.getvalue()
            )
        builtins.print(*args, **kwargs)

    namespace["print"] = recording_print
    for block in (b for b in PYTHON if b.page == page):
        if (block.marker or "").startswith("not run") or block.marker == "jax":
            continue
        if block.marker == "s3":
            _s3_bucket(request)
        exec(compile(block.code, block.source, "exec"), namespace)
        for line, claim in claimed_outputs(block.code).items():
            outputs = printed.get((block.source, line))
            assert outputs, f"{block.source}, line {line} printed nothing"
            assert printed_matches(outputs[0], claim), (
                f"{block.source}, line {line}: the page says it prints {claim}, "
                f"it printed {outputs[0]!r}"
            )


JAX_PAGES = sorted({b.page for b in PYTHON if b.marker == "jax"}, key=lambda p: str(p))
_JAX_RUNNER = """
import builtins, io, json, sys
blocks, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
printed = {}
def recording_print(*args, **kwargs):
    frame = sys._getframe(1)
    if kwargs.get("file") is None:
        text = io.StringIO()
        builtins.print(*args, **{**kwargs, "file": text})
        printed.setdefault(f"{frame.f_code.co_filename}:{frame.f_lineno}", []).append(
            text.getvalue())
    builtins.print(*args, **kwargs)
namespace = {"__name__": "docs_jax", "print": recording_print}
for source, code in blocks:
    exec(compile(code, source, "exec"), namespace)
open(out, "w").write(json.dumps(printed))
"""


@pytest.mark.parametrize("page", JAX_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_jax_blocks_run(page, tmp_path):
    import json
    import os
    import subprocess

    pytest.importorskip("jax")  # the [jax] extra; `make test-backends` installs it with [orbax]
    import orbax.checkpoint  # noqa: F401  - with JAX, the [orbax] extra must be there: no skip

    jax_blocks = [b for b in PYTHON if b.page == page and b.marker == "jax"]
    (tmp_path / "blocks.json").write_text(json.dumps([[b.source, b.code] for b in jax_blocks]))
    (tmp_path / "runner.py").write_text(_JAX_RUNNER)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "runner.py", "blocks.json", "printed.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = json.loads((tmp_path / "printed.json").read_text())
    for block in jax_blocks:
        for line, claim in claimed_outputs(block.code).items():
            outputs = printed.get(f"{block.source}:{line}")
            assert outputs, f"{block.source}, line {line} printed nothing"
            assert printed_matches(outputs[0], claim), (
                f"{block.source}, line {line}: the page says it prints {claim}, "
                f"it printed {outputs[0]!r}"
            )
    if page.name == "sharded.md":
        assert "resharded by Orbax" in done.stdout


def _s3_bucket(request) -> None:
    request.getfixturevalue("s3_server")
    import fsspec

    fs = fsspec.filesystem("s3")
    if not fs.exists(S3_BUCKET):
        fs.mkdir(S3_BUCKET)


# ------------------------------------------------------------------------------- the README


README = ROOT / "README.md"
_HISTORY = re.compile(
    r"\bissue \d+|\bround \d|\bcommit [0-9a-f]{7,}|\b(?:before|after) this change|\bthis round\b"
    r"|\b(?:this|previous|last|later|earlier|same|next) session\b|\bsession (?:before|after)\b"
    r"|\bfixed this\b",
    re.I,
)


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_carry_no_development_history(page):
    found = [
        f"{page.name}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), start=1)
        if _HISTORY.search(line)
    ]
    assert not found, "\n".join(found)


def test_readme_links_lead_to_existing_files():
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "README.md links nowhere into docs/"
    missing = [link for link in local if link and not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
