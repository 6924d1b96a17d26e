"""Tokens → syntax tree, with Go's parse-time checks (Go's ``text/template/parse``, rules restated).

Grammar (``{{``/``}}`` around each action; white space between tokens is allowed):

    template  := (text | action | define)*
    define    := {{define STRING}} list {{end}}                       (top level only)
    action    := {{pipeline}} | {{if pipeline}} list else? {{end}}
               | {{with pipeline}} list else? {{end}} | {{range pipeline}} list else? {{end}}
               | {{template STRING pipeline?}} | {{block STRING pipeline}} list {{end}}
               | {{break}} | {{continue}}                             (inside range only)
    else      := {{else}} list | {{else if pipeline}} list else? | {{else with pipeline}} list else?
    pipeline  := decl? command ("|" command)*
    decl      := $x ":=" | $x "=" | $i "," $x ":="                      (two only in range)
    command   := operand (space operand)*
    operand   := term field*                  (a field written right after a term, no space)
    term      := literal | "." | .Field | $var | function | "(" pipeline ")"

Checked here as Go checks them: functions must exist, variables must be declared in scope,
``break``/``continue`` only inside ``range``, later pipeline stages must be executable, a template
is defined once. Nesting is bounded (``MAX_DEPTH``) so a hostile source cannot exhaust the stack.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from llmhost.engine.gotemplate import nodes as n
from llmhost.engine.gotemplate.errors import GoTemplateSyntaxError
from llmhost.engine.gotemplate.lexer import Lexer, Token

MAX_DEPTH = 100  # nested control structures and parentheses (real templates: under 10)
_TERMS = frozenset({"bool", "char", "dot", "field", "ident", "number", "raw", "string", "var", "lparen"})
_NOT_EXECUTABLE = (n.Bool, n.Dot, n.Nil, n.Number, n.String)


@dataclass
class Tree:
    """A parsed template: its root list and the templates it defines (``define``/``block``)."""

    root: n.ListNode
    defines: dict[str, n.ListNode] = field(default_factory=dict)


def parse(source: str, name: str, functions: frozenset[str]) -> Tree:
    """Parse ``source``; ``name`` is how errors call it, ``functions`` the names it may call."""
    return _Parser(source, name, functions).parse()


class _End(Exception):
    """Internal: a list stopped at ``{{end}}`` or ``{{else…}}`` (raised to the list that reads it)."""


class _Parser:
    def __init__(self, source: str, name: str, functions: frozenset[str]):
        self.lexer = Lexer(source, name)
        self.tokens = self.lexer.run()
        self.i = 0
        self.functions = functions
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.depth = 0
        self.defines: dict[str, n.ListNode] = {}

    # ---- tokens ------------------------------------------------------------------------------

    def error(self, message: str, token: Token | None = None) -> GoTemplateSyntaxError:
        return self.lexer.error(message, (token or self.peek()).pos)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def peek_non_space(self) -> Token:
        while self.tokens[self.i].kind == "space":
            self.i += 1
        return self.tokens[self.i]

    def next_non_space(self) -> Token:
        self.peek_non_space()
        return self.next()

    def expect(self, kind: str, context: str) -> Token:
        token = self.next_non_space()
        if token.kind != kind:
            raise self.error(f"unexpected {_describe(token)} in {context}", token)
        return token

    def deeper(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"template nested more than {MAX_DEPTH} levels deep", token)

    # ---- structure ---------------------------------------------------------------------------

    def parse(self) -> Tree:
        nodes: list[n.Node] = []
        while self.peek().kind != "eof":
            if self.peek().kind == "left" and self._define_follows():
                self._definition()
                continue
            node = self.text_or_action()
            if isinstance(node, _Marker):
                raise self.error(f"unexpected {{{{{node.word}}}}}", node.token)
            nodes.append(node)
        return Tree(n.ListNode(0, tuple(nodes)), self.defines)

    def _define_follows(self) -> bool:
        j = self.i + 1
        while self.tokens[j].kind == "space":
            j += 1
        return self.tokens[j].kind == "keyword" and self.tokens[j].value == "define"

    def _definition(self) -> None:
        left = self.next()
        self.next_non_space()  # "define"
        name = self._template_name("define clause")
        self.expect("right", "define clause")
        self._add_define(name, self._body("define clause"), left)

    def _body(self, context: str) -> n.ListNode:
        """A defined template's body, up to its ``{{end}}``; only ``$`` is in scope inside."""
        saved_vars, self.vars = self.vars, ["$"]
        body, end = self.item_list()
        self.vars = saved_vars
        if end.word != "end":
            raise self.error(f"unexpected {{{{{end.word}}}}} in {context}", end.token)
        return body

    def _add_define(self, name: str, body: n.ListNode, token: Token) -> None:
        old = self.defines.get(name)
        if old is not None and _nonempty(old) and _nonempty(body):
            raise self.error(f'template: multiple definition of template "{name}"', token)
        if old is None or not _nonempty(old):
            self.defines[name] = body

    def item_list(self) -> tuple[n.ListNode, _Marker]:
        """Nodes up to ``{{end}}`` or ``{{else…}}``, and which of the two ended them."""
        start = self.peek().pos
        nodes: list[n.Node] = []
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Marker):
                return n.ListNode(start, tuple(nodes)), node
            nodes.append(node)
        raise self.error("unexpected EOF")

    def text_or_action(self):
        token = self.next_non_space()
        if token.kind == "text":
            return n.Text(token.pos, token.value)
        if token.kind == "left":
            return self.action(token)
        raise self.error(f"unexpected {_describe(token)} in input", token)

    def action(self, left: Token):
        token = self.next_non_space()
        if token.kind == "keyword":
            handler = {"if": self.if_control, "with": self.with_control, "range": self.range_control,
                       "template": self.template_control, "block": self.block_control,
                       "break": self.loop_control, "continue": self.loop_control,
                       "else": self.else_control, "end": self.end_control}.get(token.value)
            if handler is not None:
                return handler(token)
        self.i -= 1
        return n.Action(token.pos, self.pipeline("command", "right"))

    def end_control(self, token: Token) -> _Marker:
        self.expect("right", "end")
        return _Marker("end", token)

    def else_control(self, token: Token) -> _Marker:
        following = self.peek_non_space()
        if following.kind == "keyword" and following.value in ("if", "with"):
            return _Marker("else " + following.value, token)  # "else if": the if is read by the caller
        self.expect("right", "else")
        return _Marker("else", token)

    def loop_control(self, token: Token) -> n.Node:
        self.expect("right", token.value)
        if self.range_depth == 0:
            raise self.error(f"{{{{{token.value}}}}} outside {{{{range}}}}", token)
        return n.Break(token.pos) if token.value == "break" else n.Continue(token.pos)

    def if_control(self, token: Token) -> n.If:
        return n.If(token.pos, *self.control("if", token))

    def with_control(self, token: Token) -> n.With:
        return n.With(token.pos, *self.control("with", token))

    def range_control(self, token: Token) -> n.Range:
        return n.Range(token.pos, *self.control("range", token))

    def control(self, context: str, token: Token) -> tuple[n.Pipe, n.ListNode, n.ListNode | None]:
        self.deeper(token)
        mark = len(self.vars)
        pipe = self.pipeline(context, "right")
        self.range_depth += context == "range"
        body, end = self.item_list()
        self.range_depth -= context == "range"
        else_list = None
        if end.word in ("else if", "else with") and end.word == "else " + context:
            keyword = self.next_non_space()  # "if" / "with": an else-if is an if inside the else
            nested = self.if_control(keyword) if context == "if" else self.with_control(keyword)
            else_list = n.ListNode(end.token.pos, (nested,))
        elif end.word != "end":
            if end.word != "else":
                raise self.error(f"unexpected {{{{{end.word}}}}} in {context}", end.token)
            else_list, end = self.item_list()
            if end.word != "end":
                raise self.error(f"expected end; found {{{{{end.word}}}}}", end.token)
        del self.vars[mark:]
        self.depth -= 1
        return pipe, body, else_list

    def template_control(self, token: Token) -> n.TemplateCall:
        name = self._template_name("template clause")
        pipe = None
        if self.peek_non_space().kind != "right":
            pipe = self.pipeline("template clause", "right")
        else:
            self.next()
        return n.TemplateCall(token.pos, name, pipe)

    def block_control(self, token: Token) -> n.TemplateCall:
        self.deeper(token)
        name = self._template_name("block clause")
        pipe = self.pipeline("block clause", "right")
        self._add_define(name, self._body("block clause"), token)
        self.depth -= 1
        return n.TemplateCall(token.pos, name, pipe)

    def _template_name(self, context: str) -> str:
        token = self.next_non_space()
        if token.kind not in ("string", "raw"):
            raise self.error(f"unexpected {_describe(token)} in {context}", token)
        return _unquote(self, token)

    # ---- pipelines ---------------------------------------------------------------------------

    def pipeline(self, context: str, end: str) -> n.Pipe:
        start = self.peek_non_space()
        decl, assign = self._declarations(context)
        cmds: list[n.Command] = []
        while True:
            token = self.next_non_space()
            if token.kind == end:
                break
            if token.kind not in _TERMS and not (token.kind == "keyword" and token.value == "nil"):
                raise self.error(f"unexpected {_describe(token)} in {context}", token)
            self.i -= 1
            cmds.append(self.command())
        if not cmds:
            raise self.error(f"missing value for {context}", token)
        for stage, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], _NOT_EXECUTABLE):
                raise self.error(f"non executable command in pipeline stage {stage}", token)
        if decl and not assign:
            self.vars.extend(decl)
        return n.Pipe(start.pos, tuple(decl), assign, tuple(cmds))

    def _declarations(self, context: str) -> tuple[list[str], bool]:
        decl: list[str] = []
        while True:
            token = self.peek_non_space()
            if token.kind != "var":
                return decl, False
            save = self.i
            self.next()
            after = self.peek_non_space()
            if after.kind in ("declare", "assign"):
                self.next()
                if after.kind == "assign" and token.value not in self.vars:
                    raise self.error(f'undefined variable "{token.value}"', token)
                return decl + [token.value], after.kind == "assign"
            if after.kind == "comma":
                self.next()
                decl.append(token.value)
                if context != "range" or len(decl) > 1:
                    raise self.error(f"too many declarations in {context}", after)
                if self.peek_non_space().kind != "var":
                    raise self.error("range can only initialize variables", after)
                continue
            self.i = save
            return decl, False

    def command(self) -> n.Command:
        args: list[n.Arg] = []
        start = self.peek_non_space()
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            token = self.next()
            if token.kind == "space":
                continue
            if token.kind in ("right", "rparen"):
                self.i -= 1
            elif token.kind != "pipe":
                raise self.error(f"unexpected {_describe(token)} in operand", token)
            break
        if not args:
            raise self.error("empty command", start)
        return n.Command(start.pos, tuple(args))

    def operand(self) -> n.Arg | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        names: list[str] = []
        while self.peek().kind == "field":
            names.append(self.next().value[1:])
        if isinstance(node, n.Field):
            return n.Field(node.pos, node.names + tuple(names))
        if isinstance(node, n.Variable):
            return n.Variable(node.pos, node.name, node.names + tuple(names))
        if isinstance(node, _NOT_EXECUTABLE):
            raise self.error("unexpected . after term", self.peek())
        return n.Chain(node.pos, node, tuple(names))

    def term(self) -> n.Arg | None:
        token = self.next_non_space()
        kind, value = token.kind, token.value
        if kind == "ident":
            if value not in self.functions:
                raise self.error(f'function "{value}" not defined', token)
            return n.Identifier(token.pos, value)
        if kind == "dot":
            return n.Dot(token.pos)
        if kind == "keyword" and value == "nil":
            return n.Nil(token.pos)
        if kind == "var":
            if value not in self.vars:
                raise self.error(f'undefined variable "{value}"', token)
            return n.Variable(token.pos, value)
        if kind == "field":
            return n.Field(token.pos, (value[1:],))
        if kind == "bool":
            return n.Bool(token.pos, value == "true")
        if kind in ("number", "char"):
            return n.Number(token.pos, value, _number(self, token))
        if kind in ("string", "raw"):
            return n.String(token.pos, value, _unquote(self, token))
        if kind == "lparen":
            self.deeper(token)
            pipe = self.pipeline("parenthesized pipeline", "rparen")
            self.depth -= 1
            return pipe
        self.i -= 1
        return None


@dataclass(frozen=True)
class _Marker:
    """``{{end}}`` or ``{{else…}}``: ends a list rather than being part of one."""

    word: str
    token: Token


def _nonempty(body: n.ListNode) -> bool:
    return any(not (isinstance(node, n.Text) and not node.text.strip()) for node in body.nodes)


def _describe(token: Token) -> str:
    if token.kind == "eof":
        return "EOF"
    if token.kind == "right":
        return "}}"
    return f"{token.value!r}" if token.kind not in ("keyword",) else f"<{token.value}>"


def _unquote(parser: _Parser, token: Token) -> str:
    text = token.value
    if token.kind == "raw":
        return text[1:-1].replace("\r", "")
    try:
        value = ast.literal_eval(text)  # Go's escapes are Python's, bar a few exotic ones
    except (ValueError, SyntaxError):
        raise parser.error(f"invalid syntax: {text}", token) from None
    if not isinstance(value, str):
        raise parser.error(f"invalid syntax: {text}", token)
    return value


def _number(parser: _Parser, token: Token) -> int | float:
    text = token.value
    if token.kind == "char":
        char = _unquote(parser, Token("string", '"' + text[1:-1].replace('"', '\\"') + '"', token.pos))
        if len(char) != 1:
            raise parser.error(f"malformed character constant: {text}", token)
        return ord(char)
    if text.endswith("i"):
        raise parser.error(f"complex numbers are not supported: {text}", token)
    clean = text.replace("_", "")
    sign, digits = (clean[0], clean[1:]) if clean[:1] in ("+", "-") else ("", clean)
    prefix = digits[:2].lower()
    try:
        if prefix == "0x" and ("." in digits or "p" in digits.lower()):
            return float.fromhex(sign + digits)
        if prefix in ("0x", "0o", "0b") or digits.isdigit():
            if digits.isdigit() and len(digits) > 1 and digits[0] == "0":  # Go: a leading 0 is octal
                digits = "0o" + digits[1:]
            value = int(sign + digits, 0)
        else:
            return float(sign + digits)
    except ValueError:
        raise parser.error(f"bad number syntax: {text}", token) from None
    if not -(1 << 63) <= value < (1 << 63):
        raise parser.error(f"integer overflow: {text}", token)
    return value
