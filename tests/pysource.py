"""Parse the project's Python sources for tests that check their structure."""

from __future__ import annotations

import ast
import time
from pathlib import Path


def parse(path: Path) -> ast.Module:
    """`ast.parse` of a file, retried when CPython 3.11's AST validator trips over another thread.

    In 3.11 the AST constructor's recursion counter is shared by every thread of the interpreter, and
    `traceback` calls `ast.parse` to place its carets: when one of Ray's background threads formats a
    traceback (a failed metrics query, say) while a test parses a file, the test's parse fails with
    "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905). The next call starts from a
    clean counter."""
    source = path.read_text()
    for _ in range(4):
        try:
            return ast.parse(source, str(path))
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
            time.sleep(0.05)
    return ast.parse(source, str(path))  # the fifth try: its error, if any, is the test's
