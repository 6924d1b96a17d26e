"""The syntax tree of a Go text/template, as the parser builds it and the evaluator walks it.

Every node carries ``pos``, the character offset of its first token in the source, from which
errors give a line and column. Lists of nodes are tuples: a tree is never changed after parsing
(Ollama's "cut after .Response" builds a new tree, see ``ollama.cut_after_response``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    pos: int
    text: str


@dataclass(frozen=True)
class Dot:
    pos: int


@dataclass(frozen=True)
class Nil:
    pos: int


@dataclass(frozen=True)
class Bool:
    pos: int
    value: bool


@dataclass(frozen=True)
class Number:
    """A number constant; ``value`` is an int or a float, as Go's ideal constant becomes one."""

    pos: int
    text: str
    value: int | float


@dataclass(frozen=True)
class String:
    pos: int
    text: str  # as written, quotes included
    value: str


@dataclass(frozen=True)
class Field:
    """``.A.B.C``: field (or map key) names looked up on dot, one after the other."""

    pos: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class Variable:
    """``$x.A.B``: a variable (``$`` is the root data) and field names looked up on it."""

    pos: int
    name: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Identifier:
    """A function name (``eq``, ``json``…); only ever the first word of a command."""

    pos: int
    name: str


@dataclass(frozen=True)
class Chain:
    """``(pipeline).A.B`` or ``"x".A``: fields looked up on the value of another term."""

    pos: int
    node: Arg
    names: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    """One stage of a pipeline: a function with its arguments, or a single operand."""

    pos: int
    args: tuple[Arg, ...]


@dataclass(frozen=True)
class Pipe:
    """``$x := a | b c``: commands, each given the previous one's value as its last argument;
    ``decl`` names the variables it declares (or, with ``assign``, sets)."""

    pos: int
    decl: tuple[str, ...]
    assign: bool
    cmds: tuple[Command, ...]


@dataclass(frozen=True)
class Action:
    """``{{ pipeline }}``: its value is printed unless the pipeline declares variables."""

    pos: int
    pipe: Pipe


@dataclass(frozen=True)
class ListNode:
    pos: int
    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class If:
    pos: int
    pipe: Pipe
    body: ListNode
    else_: ListNode | None


@dataclass(frozen=True)
class With:
    pos: int
    pipe: Pipe
    body: ListNode
    else_: ListNode | None


@dataclass(frozen=True)
class Range:
    pos: int
    pipe: Pipe
    body: ListNode
    else_: ListNode | None


@dataclass(frozen=True)
class Break:
    pos: int


@dataclass(frozen=True)
class Continue:
    pos: int


@dataclass(frozen=True)
class TemplateCall:
    """``{{ template "name" pipeline }}`` (also what ``block`` leaves in place)."""

    pos: int
    name: str
    pipe: Pipe | None


Arg = Dot | Nil | Bool | Number | String | Field | Variable | Identifier | Chain | Pipe
Node = Text | Action | If | With | Range | Break | Continue | TemplateCall | ListNode
