"""Errors of Go templates: all are 400s, and all say which template and where (line:column).

    GoTemplateError (BadRequest)
    ├── GoTemplateSyntaxError   the source does not parse (at create time, or a request's template)
    └── GoTemplateExecError     executing it failed (a bad index, a type error, a limit)
"""

from __future__ import annotations

import bisect

from llmhost.errors import BadRequest


class GoTemplateError(BadRequest):
    """A Go template that cannot be parsed or executed; the message names it and the position."""

    kind = "error in"

    def __init__(self, message: str, *, name: str = "template", line: int = 0, col: int = 0):
        self.detail, self.template_name, self.line, self.col = message, name, line, col
        where = f" at {line}:{col}" if line else ""
        super().__init__(f"{self.kind} Go template {name}{where}: {message}")


class GoTemplateSyntaxError(GoTemplateError):
    kind = "invalid"


class GoTemplateExecError(GoTemplateError):
    kind = "error executing"


class Positions:
    """Offsets in a source → 1-based (line, column)."""

    def __init__(self, source: str):
        self._starts = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]

    def line_col(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._starts, pos)
        return line, pos - self._starts[line - 1] + 1
