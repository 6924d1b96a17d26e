"""Executing a parsed template against data, with Go's semantics and within a RenderBudget.

Go's rules, restated: a pipeline's commands each get the previous value as their last argument;
a nil result becomes "no value" (printed ``<no value>``); ``if``/``with`` test truth (``with`` sets
dot); ``range`` visits slices in order and maps in key order, setting dot (and its variables) to each
element, ``break``/``continue`` included; variables live until the end of the control structure that
declared them; ``template`` runs a defined template with a fresh variable scope.

Bounded, as a stranger's template must be: every node walked, range iteration and function call is a
step of the shared ``RenderBudget`` (steps, time, cancel), the output and every text a function
builds are measured against its size limits, and nesting (``template`` calls included) is capped.
"""

from __future__ import annotations

from typing import Any

from llmhost.engine.gotemplate import nodes as n
from llmhost.engine.gotemplate.errors import GoTemplateExecError, Positions
from llmhost.engine.gotemplate.funcs import BUILTINS, FuncError, sprintf
from llmhost.engine.gotemplate.parser import Tree
from llmhost.engine.gotemplate.values import NO_VALUE, Struct, format_value, is_true, stringer, type_name
from llmhost.engine.sandbox import RenderBudget
from llmhost.errors import RenderLimitError

MAX_EXEC_DEPTH = 150  # nested structures, parentheses and template calls while executing
_NO_FINAL = object()  # no value piped in from a previous command


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class Executor:
    """One execution of a tree: writes its text, within ``budget``; errors name ``name`` and a position."""

    def __init__(self, tree: Tree, name: str, source: str, budget: RenderBudget):
        self.tree, self.name, self.source, self.budget = tree, name, source, budget
        self.vars: list[list[Any]] = []
        self.out: list[str] = []
        self.size = 0
        self.depth = 0
        self.at = 0

    def run(self, root: n.ListNode, data: Any) -> str:
        self.vars = [["$", data]]
        try:
            self.walk(data, root)
        except RecursionError:
            raise self.error(f"template nested too deeply (more than {MAX_EXEC_DEPTH} levels)") from None
        return "".join(self.out)

    def error(self, message: str) -> GoTemplateExecError:
        line, col = Positions(self.source).line_col(self.at)
        return GoTemplateExecError(message, name=self.name, line=line, col=col)

    # ---- output ----------------------------------------------------------------------------------

    def emit(self, text: str) -> None:
        self.size += len(text)
        self.budget.allow(self.size)
        self.out.append(text)

    # ---- walking ---------------------------------------------------------------------------------

    def walk(self, dot: Any, node: n.Node) -> None:
        self.budget.step()
        if isinstance(node, n.Text):
            self.emit(node.text)
        elif isinstance(node, n.Action):
            self.at = node.pos
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(value)
        elif isinstance(node, n.ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, (n.If, n.With)):
            self.nested(self.walk_if_or_with, dot, node)
        elif isinstance(node, n.Range):
            self.nested(self.walk_range, dot, node)
        elif isinstance(node, n.TemplateCall):
            self.nested(self.walk_template, dot, node)
        elif isinstance(node, n.Break):
            raise _Break()
        elif isinstance(node, n.Continue):
            raise _Continue()

    def nested(self, walker, dot: Any, node: n.Node) -> None:
        self.depth += 1
        if self.depth > MAX_EXEC_DEPTH:
            self.at = node.pos
            raise self.error(f"template nested too deeply (more than {MAX_EXEC_DEPTH} levels)")
        mark = len(self.vars)
        try:
            walker(dot, node)
        finally:
            del self.vars[mark:]
            self.depth -= 1

    def walk_if_or_with(self, dot: Any, node: n.If | n.With) -> None:
        self.at = node.pos
        value = self.eval_pipeline(dot, node.pipe)
        if is_true(value):
            self.walk(value if isinstance(node, n.With) else dot, node.body)
        elif node.else_ is not None:
            self.walk(dot, node.else_)

    def walk_range(self, dot: Any, node: n.Range) -> None:
        self.at = node.pos
        value = self.eval_pipeline(dot, node.pipe)
        items = self.range_items(value)
        if not items:
            if node.else_ is not None:
                self.walk(dot, node.else_)
            return
        mark = len(self.vars)
        for index, elem in items:
            self.budget.step()
            self.set_range_vars(node.pipe, index, elem)
            try:
                self.walk(elem, node.body)
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]

    def range_items(self, value: Any) -> list[tuple[Any, Any]]:
        if value is None or value is NO_VALUE:
            return []
        if isinstance(value, (list, tuple)):
            return list(enumerate(value))
        if isinstance(value, dict):
            return sorted(value.items(), key=lambda kv: (str(type(kv[0])), kv[0]))
        if isinstance(value, int) and not isinstance(value, bool):
            if value > self.budget.range_items:
                raise RenderLimitError(f"template ranges over {value} items, more than the limit of "
                                       f"{self.budget.range_items}")
            return [(i, i) for i in range(value)]
        raise self.error(f"range can't iterate over {format_value(value)}")

    def set_range_vars(self, pipe: n.Pipe, index: Any, elem: Any) -> None:
        if not pipe.decl:
            return
        if pipe.assign:
            if len(pipe.decl) > 1:
                self.set_var(pipe.decl[0], index)
                self.set_var(pipe.decl[1], elem)
            else:
                self.set_var(pipe.decl[0], elem)
            return
        self.vars[-1][1] = elem  # the last declared (the only one, or $m of $i, $m)
        if len(pipe.decl) > 1:
            self.vars[-2][1] = index

    def walk_template(self, dot: Any, node: n.TemplateCall) -> None:
        self.at = node.pos
        body = self.tree.defines.get(node.name)
        if body is None:
            raise self.error(f'template "{node.name}" not defined')
        value = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else NO_VALUE
        saved, self.vars = self.vars, [["$", value]]
        try:
            self.walk(value, body)
        finally:
            self.vars = saved

    # ---- variables -------------------------------------------------------------------------------

    def var(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise self.error(f"undefined variable: {name}")

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.error(f"undefined variable: {name}")

    # ---- pipelines and commands ------------------------------------------------------------------

    def eval_pipeline(self, dot: Any, pipe: n.Pipe) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
            if value is None:  # a nil interface: Go digs down to "no value"
                value = NO_VALUE
        for name in pipe.decl:
            if pipe.assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def eval_command(self, dot: Any, cmd: n.Command, final: Any) -> Any:
        first = cmd.args[0]
        self.at = first.pos
        if isinstance(first, n.Field):
            return self.eval_fields(dot, first.names, cmd.args, final)
        if isinstance(first, n.Chain):
            return self.eval_fields(self.eval_arg(dot, first.node), first.names, cmd.args, final)
        if isinstance(first, n.Identifier):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, n.Variable):
            value = self.var(first.name)
            if first.names:
                return self.eval_fields(value, first.names, cmd.args, final)
            self.not_a_function(cmd.args, final)
            return value
        self.not_a_function(cmd.args, final)
        if isinstance(first, n.Pipe):
            return self.parenthesized(dot, first)
        if isinstance(first, n.Dot):
            return dot
        if isinstance(first, n.Nil):
            raise self.error("nil is not a command")
        return first.value  # Bool, Number, String

    def parenthesized(self, dot: Any, pipe: n.Pipe) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_EXEC_DEPTH:
                raise self.error(f"template nested too deeply (more than {MAX_EXEC_DEPTH} levels)")
            return self.eval_pipeline(dot, pipe)
        finally:
            self.depth -= 1

    def not_a_function(self, args: tuple[n.Arg, ...], final: Any) -> None:
        if len(args) > 1 or final is not _NO_FINAL:
            raise self.error(f"can't give argument to non-function {_describe(args[0])}")

    def eval_fields(self, receiver: Any, names: tuple[str, ...], args: tuple[n.Arg, ...], final: Any) -> Any:
        for i, name in enumerate(names):
            last = i == len(names) - 1
            receiver = self.eval_field(receiver, name, args if last else (), final if last else _NO_FINAL)
        return receiver

    def eval_field(self, receiver: Any, name: str, args: tuple[n.Arg, ...], final: Any) -> Any:
        has_args = len(args) > 1 or final is not _NO_FINAL
        if receiver is NO_VALUE:
            return NO_VALUE
        if receiver is None:
            raise self.error(f"nil pointer evaluating interface {{}}.{name}")
        if name == "String" and not has_args and (text := stringer(receiver)) is not None:
            return text  # a method comes before a field or map key of that name, as in Go
        if isinstance(receiver, Struct) and name in receiver.fields:
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            return receiver.fields[name]
        if isinstance(receiver, dict):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            return receiver.get(name)
        raise self.error(f"can't evaluate field {name} in type {type_name(receiver)}")

    def eval_arg(self, dot: Any, node: n.Arg) -> Any:
        self.at = node.pos
        if isinstance(node, n.Dot):
            value = dot
        elif isinstance(node, n.Nil):
            value = None
        elif isinstance(node, n.Field):
            value = self.eval_fields(dot, node.names, (node,), _NO_FINAL)
        elif isinstance(node, n.Variable):
            value = self.var(node.name)
            if node.names:
                value = self.eval_fields(value, node.names, (node,), _NO_FINAL)
        elif isinstance(node, n.Pipe):
            value = self.parenthesized(dot, node)
        elif isinstance(node, n.Identifier):
            value = self.eval_function(dot, node, (node,), _NO_FINAL)
        elif isinstance(node, n.Chain):
            value = self.eval_fields(self.eval_arg(dot, node.node), node.names, (node,), _NO_FINAL)
        else:
            value = node.value
        return None if value is NO_VALUE else value

    # ---- functions -------------------------------------------------------------------------------

    def eval_function(self, dot: Any, ident: n.Identifier, args: tuple[n.Arg, ...], final: Any) -> Any:
        self.budget.step()
        name, pos = ident.name, ident.pos
        nodes = args[1:]
        if name in ("and", "or"):
            return self.and_or(dot, name, nodes, final, pos)
        values = [self.eval_arg(dot, a) for a in nodes]
        if final is not _NO_FINAL:
            values.append(None if final is NO_VALUE else final)
        self.at = pos
        if name == "printf":
            return self.printf(values)
        builtin = BUILTINS[name]
        self.check_arity(name, len(values), builtin.min_args, builtin.max_args)
        if builtin.strings:
            for value in values:
                if not isinstance(value, str):
                    raise self.error(f"wrong type for value; expected string; got {type_name(value)}")
        if builtin.builds_text:
            for value in values:
                self.budget.weight(value)
        try:
            result = builtin.fn(*values)
        except FuncError as e:
            raise self.error(f"error calling {name}: {e}") from None
        if isinstance(result, str):
            self.budget.built(len(result))
        return result

    def and_or(self, dot: Any, name: str, nodes: tuple[n.Arg, ...], final: Any, pos: int) -> Any:
        count = len(nodes) + (final is not _NO_FINAL)
        self.at = pos
        self.check_arity(name, count, 1, None)
        value: Any = None
        for node in nodes:
            value = self.eval_arg(dot, node)
            if is_true(value) == (name == "or"):
                return value
        if final is not _NO_FINAL:
            value = None if final is NO_VALUE else final
        return value

    def printf(self, values: list[Any]) -> str:
        self.check_arity("printf", len(values), 1, None)
        if not isinstance(values[0], str):
            raise self.error(f"wrong type for value; expected string; got {type_name(values[0])}")
        for value in values:
            self.budget.weight(value)
        result = sprintf(values[0], values[1:], self.budget.allow)
        self.budget.built(len(result))
        return result

    def check_arity(self, name: str, got: int, least: int, most: int | None) -> None:
        if most is not None and least == most and got != least:
            raise self.error(f"wrong number of args for {name}: want {least} got {got}")
        if got < least:
            raise self.error(f"wrong number of args for {name}: want at least {least} got {got}")
        if most is not None and got > most:
            raise self.error(f"wrong number of args for {name}: want at most {most} got {got}")

    def print_value(self, value: Any) -> None:
        if value is not NO_VALUE and value is not None and not isinstance(value, str):
            self.budget.weight(value)
        self.emit(format_value(value, nil="<no value>"))


def _describe(node: n.Arg) -> str:
    if isinstance(node, n.Field):
        return "." + ".".join(node.names)
    if isinstance(node, n.Variable):
        return ".".join((node.name, *node.names))
    if isinstance(node, n.String):
        return node.text
    if isinstance(node, n.Number):
        return node.text
    if isinstance(node, n.Bool):
        return "true" if node.value else "false"
    if isinstance(node, n.Dot):
        return "."
    return "nil" if isinstance(node, n.Nil) else "(...)"
