"""Go text/template source → tokens (Go's ``text/template/parse`` lexer, rules restated).

Outside actions everything is text. ``{{`` opens an action and ``}}`` closes it; ``{{- `` (a minus
and a white-space character) trims the white space before it, `` -}}`` the white space after it.
``{{/* … */}}`` is a comment (it may carry trim markers too). Inside an action:

    space     runs of spaces, tabs, newlines (they separate a command's arguments)
    field     .Name          variable  $ or $name        dot   .
    ident     a function name or a keyword (if, else, end, range, with, define, template, block,
              break, continue, nil, true, false)
    string    "…" with Go escapes, `raw`, 'c' (a character constant: a number)
    number    Go's literals: 42, -1, 0x1F, 0o17, 0b101, 1_000, 1.5, 1e3, .5
    symbols   |  (  )  ,  :=  =
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmhost.engine.gotemplate.errors import GoTemplateSyntaxError, Positions

SPACE = " \t\r\n"
KEYWORDS = frozenset({"block", "break", "continue", "define", "else", "end", "if", "range", "nil",
                      "template", "with"})
_WORD = re.compile(r"\w+")  # Go: letters, digits and "_" (Unicode letters too)
_NUMBER = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|0[bB][01_]+|0[oO][0-7_]+"
    r"|[0-9_]*\.?[0-9_]*(?:[eE][+-]?[0-9_]+)?)i?"
)


@dataclass(frozen=True)
class Token:
    kind: str  # text, left, right, space, field, var, dot, ident, keyword, bool, string, raw, char,
    #            number, pipe, lparen, rparen, comma, declare, assign, eof
    value: str
    pos: int


class Lexer:
    """Tokens of one template source; ``GoTemplateSyntaxError`` names the position of a bad one."""

    def __init__(self, source: str, name: str):
        self.src, self.name = source, name
        self.tokens: list[Token] = []
        self._paren = 0

    def error(self, message: str, pos: int) -> GoTemplateSyntaxError:
        line, col = Positions(self.src).line_col(pos)
        return GoTemplateSyntaxError(message, name=self.name, line=line, col=col)

    def run(self) -> list[Token]:
        src, i, n = self.src, 0, len(self.src)
        trim_next = False
        while i < n:
            start = src.find("{{", i)
            end = n if start < 0 else start
            trim_left = start >= 0 and src.startswith("-", start + 2) and start + 3 < n and src[start + 3] in SPACE
            text = src[i:end]
            if trim_next:
                text, i = text.lstrip(SPACE), i + len(text) - len(text.lstrip(SPACE))
            if trim_left:
                text = text.rstrip(SPACE)
            if text:
                self.tokens.append(Token("text", text, i))
            if start < 0:
                break
            i, trim_next = self._action(start, start + (4 if trim_left else 2))
        self.tokens.append(Token("eof", "", n))
        return self.tokens

    def _action(self, left: int, i: int) -> tuple[int, bool]:
        """Lex one action from just after its left delimiter; (index after it, trim what follows)."""
        src = self.src
        if src.startswith("/*", i):
            return self._comment(left, i)
        self.tokens.append(Token("left", "{{", left))
        self._paren = 0
        while True:
            delim, trim = self._at_right(i)
            if delim:
                if self._paren:
                    raise self.error("unclosed left paren", i)
                self.tokens.append(Token("right", "}}", i))
                return i + (4 if trim else 2), trim
            if i >= len(src):
                raise self.error("unclosed action", left)
            i = self._inside(i)

    def _at_right(self, i: int) -> tuple[bool, bool]:
        src = self.src
        if i + 1 < len(src) and src[i] in SPACE and src[i + 1] == "-" and src.startswith("}}", i + 2):
            return True, True
        return src.startswith("}}", i), False

    def _comment(self, left: int, i: int) -> tuple[int, bool]:
        close = self.src.find("*/", i + 2)
        if close < 0:
            raise self.error("unclosed comment", left)
        delim, trim = self._at_right(close + 2)
        if not delim:
            raise self.error("comment ends before closing delimiter", close)
        return close + 2 + (4 if trim else 2), trim

    def _inside(self, i: int) -> int:
        """Lex one token inside an action starting at ``i``; the index after it."""
        src, c = self.src, self.src[i]
        if c in SPACE:
            j = i
            while j < len(src) and src[j] in SPACE and not self._at_right(j)[1]:
                j += 1
            self.tokens.append(Token("space", src[i:j], i))
            return j if j > i else i + 1
        single = {"|": "pipe", "(": "lparen", ")": "rparen", ",": "comma", "=": "assign"}
        if c in single:
            self._paren += {"(": 1, ")": -1}.get(c, 0)
            if self._paren < 0:
                raise self.error("unexpected right paren", i)
            self.tokens.append(Token(single[c], c, i))
            return i + 1
        if c == ":":
            if not src.startswith(":=", i):
                raise self.error("expected :=", i)
            self.tokens.append(Token("declare", ":=", i))
            return i + 2
        if c == '"':
            return self._quoted(i, '"', "string", "unterminated quoted string")
        if c == "`":
            close = src.find("`", i + 1)
            if close < 0:
                raise self.error("unterminated raw quoted string", i)
            self.tokens.append(Token("raw", src[i:close + 1], i))
            return close + 1
        if c == "'":
            return self._quoted(i, "'", "char", "unterminated character constant")
        if c == "$":
            return self._word(i, i + 1, "var")
        if c == "." and not (i + 1 < len(src) and src[i + 1].isdigit()):
            return self._word(i, i + 1, "field")
        if c in "+-.0123456789":
            return self._number(i)
        if c.isalnum() or c == "_":
            return self._word(i, i, "ident")
        raise self.error(f"unrecognized character in action: {c!r}", i)

    def _quoted(self, i: int, quote: str, kind: str, unterminated: str) -> int:
        src, j = self.src, i + 1
        while True:
            if j >= len(src) or src[j] == "\n":
                raise self.error(unterminated, i)
            if src[j] == "\\":
                if j + 1 >= len(src) or src[j + 1] == "\n":
                    raise self.error(unterminated, i)
                j += 2
                continue
            if src[j] == quote:
                break
            j += 1
        self.tokens.append(Token(kind, src[i:j + 1], i))
        return j + 1

    def _word(self, i: int, j: int, kind: str) -> int:
        match = _WORD.match(self.src, j)
        end = match.end() if match else j
        self._terminated(end)
        word = self.src[i:end]
        if kind == "field" and end == j:
            kind = "dot"
        elif kind == "ident" and word in ("true", "false"):
            kind = "bool"
        elif kind == "ident" and word in KEYWORDS:
            kind = "keyword"
        self.tokens.append(Token(kind, word, i))
        return end

    def _number(self, i: int) -> int:
        match = _NUMBER.match(self.src, i)
        end = match.end() if match else i
        text = self.src[i:end]
        if not any(ch.isdigit() for ch in text) or (end < len(self.src) and (self.src[end].isalnum())):
            raise self.error(f"bad number syntax: {self.src[i:max(end, i + 1)]!r}", i)
        self.tokens.append(Token("number", text, i))
        return end

    def _terminated(self, end: int) -> None:
        """A word must be followed by a terminator: Go refuses ``.A"x"`` and ``$x+``."""
        src = self.src
        if end >= len(src) or src[end] in SPACE + ".,|:()" or src.startswith("}}", end):
            return
        raise self.error(f"bad character {src[end]!r}", end)
