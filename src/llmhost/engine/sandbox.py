"""A Jinja sandbox whose renders are bounded in time, steps and size.

Chat templates come from strangers (GGUF files, Modelfiles, requests). Jinja's sandbox keeps them
away from Python's internals but not from running forever or filling memory: nested
``range(100000)`` loops render for hours and ``'x' * 10**8`` allocates gigabytes, in a runner that
serves every other request of its model. Each render here gets a ``RenderBudget``:

- a deadline and a number of steps (loop iterations, calls and filters), checked at every step,
  so a render that runs too long, or whose request was cancelled, stops itself at its next step;
- a size no value may exceed and no output: operations that multiply sizes (``*``, ``**``, ``%``
  and ``format`` widths, ``join``, ``replace``, ``indent``, widths given to filters and methods)
  are checked before they run, so none allocates much more than the limit; whatever else calls,
  filters, ``+`` and ``~`` build is measured after; a value is measured whole (lists and dicts
  with their contents) where it is turned into text (output, ``~``, string filters);
- a total of characters built (the work), so many values under the limit cannot add up.

Exceeding any of them is a ``RenderLimitError`` (400) that names the limit. The limits grow with
the request (a long conversation renders to a long prompt, which is then cut to the context): the
size by twice the text the template is given, the time and steps with its number of messages.
"""

from __future__ import annotations

import contextvars
import functools
import re
import string
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, KeysView, ValuesView
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, _PassArg

from llmhost.errors import RenderLimitError

WORK_FACTOR = 16  # characters a render may build in all, as a multiple of its size limit
STEPS_PER_ITEM = 100  # more steps a render may take per message or tool it is given (real ones: ~5-20)
SECONDS_PER_ITEM = 1e-4  # more time likewise (real templates: ~10 µs a message)
MAX_INT_BITS = 1 << 16  # integers a template computes (str() refuses more than 4300 digits anyway)
_STEP = "__llmhost_step"  # called at the top of every loop body (see BoundedEnvironment._parse)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})  # str methods padding to a width
_WIDTH_FILTERS = frozenset({"batch", "center", "slice"})  # filters whose count or width builds that much
# Filters that take lists and dicts without turning them into text.
_CONTAINER_FILTERS = frozenset({
    "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float", "groupby", "int",
    "items", "join", "last", "length", "list", "map", "max", "min", "reject", "rejectattr", "reverse",
    "random", "round", "select", "selectattr", "slice", "sort", "sum", "unique",
})  # fmt: skip


@dataclass(frozen=True)
class RenderLimits:
    """What one request's renders may do, before they grow with the request (see above): ``chars``
    is the size allowed to the output and to any value."""

    seconds: float = 2.0
    steps: int = 1_000_000  # loop iterations, calls and filters
    chars: int = 1 << 20
    range_items: int = 100_000  # items of one range()

    def budget(self, variables: Any = None, cancel: threading.Event | None = None) -> RenderBudget:
        """A fresh budget for the renders of one request, given its template ``variables`` (the
        messages and tools, whose size the limits grow with); setting ``cancel`` stops them."""
        items = sum(len(v) for v in (variables or {}).values() if isinstance(v, list))
        return RenderBudget(self, text_size(variables), items, cancel)


class RenderBudget:
    """What is left of one request's RenderLimits: time, steps, characters; shared by its renders."""

    def __init__(self, limits: RenderLimits, input_chars: int = 0, items: int = 0,
                 cancel: threading.Event | None = None):
        self.max_chars = limits.chars + 2 * input_chars
        self.max_work = WORK_FACTOR * self.max_chars
        self.max_steps = limits.steps + STEPS_PER_ITEM * items
        self.seconds = limits.seconds + SECONDS_PER_ITEM * items
        self.range_items = limits.range_items
        self.deadline = time.monotonic() + self.seconds
        self.cancel = cancel or threading.Event()
        self.steps = 0
        self.work = 0

    def step(self) -> None:
        """One loop iteration, call or filter."""
        self.steps += 1
        if self.steps > self.max_steps:
            raise RenderLimitError(
                f"chat template exceeded the limit of {self.max_steps} steps (loop iterations and calls)"
            )
        self.check_time()

    def check_time(self) -> None:
        if self.cancel.is_set():
            raise RenderLimitError("chat template rendering was cancelled")
        if time.monotonic() > self.deadline:
            raise RenderLimitError(f"chat template exceeded the render time limit of {self.seconds:.3g} s")

    def allow(self, size: int) -> None:
        """Refuse an operation that would build ``size`` characters, before it runs."""
        if size > self.max_chars:
            raise RenderLimitError(f"chat template exceeded the render limit of {self.max_chars} characters")

    def built(self, size: int) -> None:
        """Count ``size`` characters one operation built."""
        self.allow(size)
        self.work += size
        if self.work > self.max_work:
            raise RenderLimitError(f"chat template exceeded the limit of {self.max_work} characters built in all")

    def weight(self, value: Any) -> int:
        """About how many characters ``str(value)`` makes, contents included; RenderLimitError as
        soon as that passes the limit, so measuring costs no more than the limit either."""
        if isinstance(value, (str, bytes)):
            return len(value)
        if isinstance(value, int):
            return value.bit_length() // 3 + 1
        items = _contents(value)
        if items is None:
            return 16  # None, floats, functions, Undefined: a short repr
        total = 2
        for item in items:
            total += 2 + self.weight(item)
            self.allow(total)
        return total

    def check_ints(self, args: Iterable[Any]) -> None:
        """Widths and counts: an integer argument larger than the size limit builds too much."""
        for arg in args:
            if isinstance(arg, int) and abs(arg) > self.max_chars:
                self.allow(abs(arg))


def _contents(value: Any) -> Iterable[Any] | None:
    if isinstance(value, Namespace):
        value = value._Namespace__attrs
    if isinstance(value, (KeysView, ValuesView, ItemsView)):
        value = value.mapping  # type: ignore[union-attr]
    if isinstance(value, dict):
        return (part for item in value.items() for part in item)
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    return None


def _size(value: Any) -> int:
    """Characters or items an operation's result holds (its own, not what it refers to)."""
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


_active: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar("llmhost_render_budget", default=None)


def _budget() -> RenderBudget:
    budget = _active.get()
    if budget is None:  # compiling: Jinja folds constant filter calls; this leaves them to the render
        raise RuntimeError("no render budget")
    return budget


def render(template: Any, variables: dict[str, Any], budget: RenderBudget) -> str:
    """``template`` rendered with ``variables`` within ``budget``, its output size checked as it streams."""
    token = _active.set(budget)
    try:
        pieces, size = [], 0
        for piece in template.generate(variables):
            size += len(piece)
            budget.allow(size)
            budget.check_time()
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _active.reset(token)


def joined(chunks: Iterable[str]) -> str:
    """``"".join(chunks)``, refused as soon as it grows past the render's size limit."""
    budget = _budget()
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        budget.allow(size)
        parts.append(chunk)
    return "".join(parts)


def text_size(value: Any) -> int:
    """Characters of text in ``value`` (strings in nested lists and dicts, keys included)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


class _CodeGenerator(CodeGenerator):
    """Jinja's code generator with ``~`` (concatenation) going through the size check."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        if frame.eval_ctx.volatile:
            markup = "context.eval_ctx.autoescape"
        else:
            markup = "True" if frame.eval_ctx.autoescape else "False"
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(f"), {markup})")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every render held to the RenderBudget it runs under."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, *, filters: dict[str, Callable] | None = None, globals: dict[str, Any] | None = None,
                 **options: Any):
        super().__init__(finalize=_finalize, **options)
        self.filters.update(filters or {})
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals.update(globals or {})
        del self.globals["lipsum"]  # lipsum(n) builds n paragraphs of text in one call
        self.globals["range"] = _range
        self.globals[_STEP] = _step

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # Every loop body starts with a call, and every call is a step: the loop cannot outrun the budget.
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            call = nodes.Call(nodes.Name(_STEP, "load"), [], [], None, None)
            loop.body.insert(0, nodes.ExprStmt(call).set_lineno(loop.lineno).set_environment(self))
        return tree

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        args = _check_method_call(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.built(_size(result))
        return result

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if operator == "+" and type(left) is str and type(right) is str:  # most of a chat template's work
            budget.built(len(left) + len(right))
            return left + right
        if operator == "*":
            _check_repeat(budget, left, right)
        elif operator == "**":
            _check_power(budget, left, right)
        elif operator == "+" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, type(left)):
            budget.allow(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            budget.allow(_percent_size(budget, left, right))
        result = super().call_binop(context, operator, left, right)
        budget.built(_size(result))
        return result

    def bounded_concat(self, parts: tuple[Any, ...], markup: bool) -> str:
        """``a ~ b ~ …``, measured before it is joined."""
        budget = _budget()
        budget.built(sum(budget.weight(part) for part in parts))
        return markup_join(parts) if markup else str_join(parts)


def _finalize(value: Any) -> Any:
    # Every {{ expression }} passes here on its way to str(): a list or dict is measured whole first.
    budget = _active.get()
    if budget is not None:  # None: constant output, finalized while compiling
        budget.built(budget.weight(value))
    return value


def _step() -> str:
    return ""  # the call itself is the step (BoundedEnvironment.call)


def _range(*args: int) -> range:
    budget = _budget()
    items = range(*args)
    if len(items) > budget.range_items:
        raise RenderLimitError(
            f"chat template asked for a range of {len(items)} items, more than the limit of {budget.range_items}"
        )
    return items


def _check_repeat(budget: RenderBudget, left: Any, right: Any) -> None:
    if isinstance(left, int) and not isinstance(right, int):
        left, right = right, left
    if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, int):
        unit = len(left) if isinstance(left, (str, bytes)) else budget.weight(left)
        budget.allow(unit * right)
    elif isinstance(left, int) and isinstance(right, int):
        _check_bits(left.bit_length() + right.bit_length())


def _check_power(budget: RenderBudget, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        _check_bits(base.bit_length() * exponent)


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise RenderLimitError(f"chat template computed an integer of more than {MAX_INT_BITS} bits")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")


def _percent_size(budget: RenderBudget, fmt: str, args: Any) -> int:
    """An upper bound on the length of ``fmt % args``: each conversion is at most its width and
    precision plus the widest argument."""
    values = args if isinstance(args, tuple) else (args,)
    widest = max((budget.weight(v) for v in values), default=0)
    star = max((abs(v) for v in values if isinstance(v, int)), default=0)
    total = len(fmt)
    for spec in _PERCENT_SPEC.finditer(fmt):
        numbers = [n for n in spec.groups() if n]
        total += widest + sum(star if n == "*" else int(n) for n in numbers)
    return total


def _format_size(budget: RenderBudget, fmt: str, args: tuple, kwargs: dict) -> int:
    """An upper bound on the length of ``fmt.format(*args, **kwargs)`` (or ``format_map``)."""
    widest = max((budget.weight(v) for v in (*args, *kwargs.values())), default=0)
    total = len(fmt)
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None:
            continue
        if "{" in (spec or ""):  # the width would come from an argument, after this check
            raise RenderLimitError("chat template format specs with nested fields are not allowed")
        total += widest + sum(int(n) for n in re.findall(r"\d+", spec or ""))
    return total


def _join_size(budget: RenderBudget, separator: Any, items: list) -> int:
    return sum(budget.weight(item) for item in items) + max(len(items) - 1, 0) * budget.weight(separator)


def _replace_size(text: str, old: str, new: str, count: int = -1) -> int:
    occurrences = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        occurrences = min(occurrences, count)
    return len(text) + occurrences * max(len(new) - len(old), 0)


def _check_method_call(budget: RenderBudget, func: Any, args: tuple, kwargs: dict) -> tuple:
    """Checks for the str methods that multiply sizes; the (possibly materialised) arguments."""
    method = getattr(func, "__wrapped__", func)  # str.format comes wrapped by the sandbox
    text, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if not isinstance(text, str):
        return args
    if name in _WIDTH_METHODS:
        budget.check_ints((*args, *kwargs.values()))
    elif name == "join" and args:
        args = (list(args[0]), *args[1:])
        budget.allow(_join_size(budget, text, args[0]))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        budget.allow(_replace_size(text, *args[:2], *args[2:3]))
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            budget.allow(len(text) + text.count("\t") * tab)
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((budget.weight(v) for v in args[0].values()), default=1)
        budget.allow(len(text) * max(longest, 1))
    elif name == "format":
        budget.allow(_format_size(budget, text, args, kwargs))
    elif name == "format_map" and args:
        budget.allow(_format_size(budget, text, (), {"": args[0]}))
    return args


def _bounded_filter(name: str, func: Callable) -> Callable:
    """``func`` counted as a step, with its arguments checked before and its result measured after."""
    skip = 0 if _PassArg.from_obj(func) is None else 1  # a context/environment first argument

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if name in _WIDTH_FILTERS:
            budget.check_ints((*args[skip + 1 :], *kwargs.values()))
        args = _check_filter_args(budget, name, args, skip, kwargs)
        result = func(*args, **kwargs)
        budget.built(_size(result))
        return result

    return bounded


def _check_filter_args(budget: RenderBudget, name: str, args: tuple, skip: int, kwargs: dict) -> tuple:
    value: Any = args[skip] if len(args) > skip else None  # the filtered value: anything a template holds
    rest = args[skip + 1 :]
    if name not in _CONTAINER_FILTERS:  # it will turn its arguments into text
        for arg in (*args[skip:], *kwargs.values()):
            budget.weight(arg)
    if name == "join":
        items = list(value)
        budget.allow(_join_size(budget, rest[0] if rest else kwargs.get("d", ""), items))
        return (*args[:skip], items, *rest)
    if name == "replace" and isinstance(value, str) and len(rest) >= 2:
        budget.allow(_replace_size(value, str(rest[0]), str(rest[1]), rest[2] if len(rest) > 2 else -1))
    elif name == "indent" and isinstance(value, str):
        width = rest[0] if rest else kwargs.get("width", 4)
        unit = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        budget.allow(len(value) + (value.count("\n") + 1) * unit)
    elif name == "format" and isinstance(value, str):
        budget.allow(_percent_size(budget, value, kwargs or tuple(rest)))
    elif name == "sum" and not isinstance(kwargs.get("start", rest[1] if len(rest) > 1 else 0), (int, float)):
        raise RenderLimitError("chat template may only sum numbers")  # lists: quadratic copying
    return args


__all__ = ["BoundedEnvironment", "RenderBudget", "RenderLimitError", "RenderLimits", "joined", "render", "text_size"]
