"""Ollama's use of Go templates (its ``template`` package): the data a template is given, and how.

A template is parsed once (``OllamaTemplate``). Ollama's rules, restated:

- Parsing appends ``{{ .Response }}`` to a template that mentions neither ``.Messages`` nor
  ``.Response``. ``vars`` are the field and variable names it mentions, lower-cased.
- Executing with a prompt and a suffix (fill-in-the-middle) gives it ``.Prompt``, ``.Suffix``.
- A template that mentions ``.Messages`` gets the whole conversation once: ``.System`` (every system
  message, joined by blank lines), ``.Messages`` (consecutive messages of one role merged with a
  blank line, tool results kept apart), ``.Tools``, ``.Think``, ``.ThinkLevel``, ``.IsThinkSet``.
- Any other ("legacy") template runs once per turn with ``.System``, ``.Prompt`` and ``.Response``;
  the last turn runs only up to its ``.Response``, which is where the model's answer goes.

The values are typed as Ollama's are (``values.Struct``), so printing a tool call's arguments or the
tools gives the JSON Ollama gives, and a misspelt field is an error, as it is there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from llmhost.engine.gotemplate import nodes as n
from llmhost.engine.gotemplate.errors import GoTemplateError
from llmhost.engine.gotemplate.exec import Executor
from llmhost.engine.gotemplate.funcs import FUNCTION_NAMES
from llmhost.engine.gotemplate.parser import Tree, parse
from llmhost.engine.gotemplate.values import GoMap, GoSlice, Struct, go_json
from llmhost.engine.sandbox import RenderBudget, RenderLimits

_RESPONSE = n.Action(-1, n.Pipe(-1, (), False, (n.Command(-1, (n.Field(-1, ("Response",)),)),)))


@dataclass(frozen=True)
class Values:
    """What a request gives a template (Ollama's ``template.Values``)."""

    messages: Sequence[dict[str, Any]] = ()
    tools: Sequence[dict[str, Any]] = ()
    prompt: str = ""
    suffix: str = ""
    think: bool | str | None = None  # the request's think: None (unset), a bool or a level

    def think_fields(self) -> dict[str, Any]:
        """``.Think`` (on for true or a level), ``.ThinkLevel`` ("medium" for true), ``.IsThinkSet``."""
        level = self.think if isinstance(self.think, str) else "medium" if self.think is True else ""
        return {"Think": self.think is True or isinstance(self.think, str), "ThinkLevel": level,
                "IsThinkSet": self.think is not None}


class OllamaTemplate:
    """A parsed Go template with Ollama's execution rules; ``name`` says which template in errors."""

    def __init__(self, source: str, name: str = "template"):
        self.source, self.name = source, name
        self.tree: Tree = parse(source, name, FUNCTION_NAMES)
        self.vars = template_vars(self.tree)
        if "messages" not in self.vars and "response" not in self.vars:
            root = self.tree.root
            self.tree = dataclasses.replace(self.tree, root=n.ListNode(root.pos, (*root.nodes, _RESPONSE)))
        self._cut_root: n.ListNode | None = None

    def execute(self, values: Values, budget: RenderBudget | None = None) -> str:
        """The prompt for ``values``, rendered within ``budget`` (default: the default limits)."""
        if budget is None:
            budget = RenderLimits().budget({"messages": list(values.messages), "tools": list(values.tools)})
        think = values.think_fields()
        if values.prompt and values.suffix:
            return self._run(self.tree.root, {"Prompt": values.prompt, "Suffix": values.suffix, "Response": "",
                                              **think}, budget)
        system, messages = collate(values.messages)
        if "messages" in self.vars:
            data = {"System": system, "Messages": [message_value(m) for m in messages],
                    "Tools": tools_value(values.tools), "Response": "", **think}
            return self._run(self.tree.root, data, budget)
        return self._legacy(messages, think, budget)

    def _legacy(self, messages: list[dict[str, Any]], think: dict[str, Any], budget: RenderBudget) -> str:
        out: list[str] = []
        turn = {"System": "", "Prompt": "", "Response": ""}

        def flush() -> None:
            out.append(self._run(self.tree.root, {**turn, **think}, budget))
            turn.update(System="", Prompt="", Response="")

        for message in messages:
            role, content = message.get("role"), message.get("content") or ""
            if role == "system":
                if turn["Prompt"] or turn["Response"]:
                    flush()
                turn["System"] = content
            elif role == "user":
                if turn["Response"]:
                    flush()
                turn["Prompt"] = content
            elif role == "assistant":
                turn["Response"] = content
        if self._cut_root is None:
            self._cut_root = cut_after_response(self.tree.root)
        out.append(self._run(self._cut_root, {**turn, **think}, budget))
        return "".join(out)

    def _run(self, root: n.ListNode, data: dict[str, Any], budget: RenderBudget) -> str:
        return Executor(self.tree, self.name, self.source, budget).run(root, data)


@lru_cache(maxsize=64)
def parsed(source: str) -> OllamaTemplate | None:
    """``source`` parsed (None when it does not parse): for the questions asked of a template with
    every request (its tool-call tag, thinking tags, variables), which must not re-parse it each time."""
    try:
        return OllamaTemplate(source)
    except GoTemplateError:
        return None


# ---- what Ollama reads from a template's tree -----------------------------------------------------


def template_vars(tree: Tree) -> frozenset[str]:
    """Ollama's ``Template.Vars``: field and variable names anywhere (defined templates included),
    lower-cased; ``$.Messages`` gives ``$`` and ``messages``."""
    found: set[str] = set()
    for root in (tree.root, *tree.defines.values()):
        for node in walk(root):
            if isinstance(node, n.Field):
                found.update(name.lower() for name in node.names)
            elif isinstance(node, n.Variable):
                found.update(name.lower() for name in (node.name, *node.names))
    return frozenset(found)


def walk(node: Any):
    """Every node of a tree, depth first, in source order (pipelines and their arguments included)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if item is None:
            continue
        yield item
        children: list[Any] = []
        if isinstance(item, n.ListNode):
            children = list(item.nodes)
        elif isinstance(item, (n.If, n.With, n.Range)):
            children = [item.pipe, item.body, item.else_]
        elif isinstance(item, (n.Action, n.TemplateCall)):
            children = [item.pipe]
        elif isinstance(item, n.Pipe):
            children = [arg for cmd in item.cmds for arg in cmd.args]
        elif isinstance(item, n.Chain):
            children = [item.node]
        stack.extend(reversed(children))


def cut_after_response(root: n.ListNode) -> n.ListNode:
    """The template up to its first ``.Response`` (Ollama's ``deleteNode``): every node after it
    in source order goes; conditions of ``if``/``with``/``range`` are not looked into."""
    cut = False

    def keep(node: Any) -> Any:
        nonlocal cut
        if isinstance(node, n.Field) and "Response" in node.names:
            cut = True
            return node
        if cut:
            return None
        if isinstance(node, n.ListNode):
            return n.ListNode(node.pos, tuple(k for k in map(keep, node.nodes) if k is not None))
        if isinstance(node, (n.If, n.With, n.Range)):
            body = keep(node.body) or n.ListNode(node.pos, ())
            else_ = keep(node.else_) if node.else_ is not None else None
            return dataclasses.replace(node, body=body, else_=else_)
        if isinstance(node, n.Action):
            pipe = keep(node.pipe)
            return None if pipe is None else n.Action(node.pos, pipe)
        if isinstance(node, n.Pipe):
            cmds = []
            for cmd in node.cmds:
                args = tuple(k for k in map(keep, cmd.args) if k is not None)
                if not args:
                    return None
                cmds.append(n.Command(cmd.pos, args))
            return dataclasses.replace(node, cmds=tuple(cmds)) if cmds else None
        return node

    return keep(root) or n.ListNode(root.pos, ())


def tool_call_tag(template: OllamaTemplate) -> str:
    """The text a model writes before its tool calls (Ollama's ``parseTag``): the first text inside
    the ``{{ if .ToolCalls }}`` block, up to any ``{``; ``{`` when there is none (bare JSON calls)."""
    block = _tool_calls_if(template.tree.root.nodes)
    text = _first_text(block.body.nodes) if block is not None else None
    if text is None:
        return "{"
    tag = text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or "{"


def _tool_calls_if(nodes: Sequence[Any]) -> n.If | None:
    for node in nodes:
        if isinstance(node, n.If) and any(isinstance(arg, n.Field) and "ToolCalls" in arg.names
               for cmd in node.pipe.cmds for arg in cmd.args):
            return node
        if isinstance(node, n.ListNode):
            found = _tool_calls_if(node.nodes)
        elif isinstance(node, (n.If, n.With, n.Range)):
            found = _tool_calls_if(node.body.nodes) or (_tool_calls_if(node.else_.nodes) if node.else_ else None)
        else:
            continue
        if found is not None:
            return found
    return None


def _first_text(nodes: Sequence[Any]) -> str | None:
    for node in nodes:
        if isinstance(node, n.Text):
            if node.text.strip():
                return node.text
        elif isinstance(node, n.ListNode):
            found = _first_text(node.nodes)
            if found is not None:
                return found
        elif isinstance(node, (n.If, n.With, n.Range)):
            found = _first_text(node.body.nodes)
            if found is None and node.else_ is not None:
                found = _first_text(node.else_.nodes)
            return found
    return None


def thinking_tags(template: OllamaTemplate) -> tuple[str, str]:
    """Ollama's ``thinking.InferTags``: where ``.Thinking`` is used inside a range over ``.Messages``,
    the first and last texts of the list around it (e.g. ``<think>``, ``</think>``); "" when none."""
    tags = ["", ""]

    def visit(node: Any, lists: list[n.ListNode], ranges: list[n.Range]) -> None:
        if isinstance(node, n.Field) and node.names[0] == "Thinking" and ranges and _ranges_messages(ranges[-1]):
            nodes = lists[-1].nodes if lists else ()
            if nodes and isinstance(nodes[0], n.Text):
                tags[0] = nodes[0].text.strip()
            if nodes and isinstance(nodes[-1], n.Text):
                tags[1] = nodes[-1].text.strip()
        children: list[Any] = []
        if isinstance(node, n.ListNode):
            lists, children = [*lists, node], list(node.nodes)
        elif isinstance(node, (n.If, n.With, n.Range)):
            if isinstance(node, n.Range):
                ranges = [*ranges, node]
            children = [node.pipe, node.body, node.else_]
        elif isinstance(node, (n.Action, n.TemplateCall)):
            children = [node.pipe]
        elif isinstance(node, n.Pipe):
            children = [arg for cmd in node.cmds for arg in cmd.args]
        for child in children:
            if child is not None:
                visit(child, lists, ranges)

    visit(template.tree.root, [], [])
    return tags[0], tags[1]


def _ranges_messages(node: n.Range) -> bool:
    """Whether the range's pipeline reads ``.Messages`` (a field: ``$.Messages`` does not count)."""
    return any(isinstance(item, n.Field) and item.names[0] == "Messages" for item in walk(node.pipe))


# ---- the data, typed as Ollama's ------------------------------------------------------------------


def collate(messages: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """All system texts joined by blank lines, and the messages with consecutive ones of one role
    merged (their contents joined by a blank line), except tool results."""
    system: list[str] = []
    collated: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "system":
            system.append(content)
        if collated and collated[-1].get("role") == role and role != "tool":
            collated[-1] = {**collated[-1], "content": (collated[-1].get("content") or "") + "\n\n" + content}
        else:
            collated.append(message)
    return "\n\n".join(system), collated


def _json_text(value: Any) -> str:
    return go_json(value)


def _map_text(value: GoMap) -> str:
    return "{}" if value.nil else go_json(value)


def go_any(value: Any) -> Any:
    """A JSON value as Go decodes it into ``any``: every number a float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {str(k): go_any(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [go_any(v) for v in value]
    return value


def _object(value: Any) -> dict[str, Any]:
    """A JSON object from the request, or an empty one for anything else."""
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def message_value(message: dict[str, Any]) -> Struct:
    """A message as Ollama's template sees it (``*templateMessage``)."""
    calls = [tool_call_value(call) for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    return Struct("*template.templateMessage", {
        "Role": _text(message.get("role")),
        "Content": _text(message.get("content")),
        "Thinking": _text(message.get("thinking") or message.get("reasoning_content")),
        "Images": GoSlice(nil=True),
        "ToolCalls": GoSlice(calls, nil=not calls),
        "ToolName": _text(message.get("tool_name") or message.get("name")),
        "ToolCallID": _text(message.get("tool_call_id")),
    })


def tool_call_value(call: dict[str, Any]) -> Struct:
    function = _object(call.get("function"))
    arguments = function.get("arguments")
    index = function.get("index", 0)
    args = GoMap(go_any(arguments) if isinstance(arguments, dict) else {}, nil=not isinstance(arguments, dict),
                 string=_map_text)
    return Struct("template.templateToolCall", {
        "ID": _text(call.get("id")),
        "Function": Struct("template.templateToolCallFunction", {
            "Index": index if isinstance(index, int) and not isinstance(index, bool) else 0,
            "Name": _text(function.get("name")),
            "Arguments": args,
        }),
    })


_TOOL_JSON = (("Type", "type", False), ("Items", "items", True), ("Function", "function", False))
_FUNCTION_JSON = (("Name", "name", False), ("Description", "description", False),
                  ("Parameters", "parameters", False))
_PARAMETERS_JSON = (("Type", "type", False), ("Defs", "$defs", True), ("Items", "items", True),
                    ("Required", "required", True), ("Properties", "properties", False))
_PROPERTY_JSON = tuple((name, key, True) for name, key in (
    ("AnyOf", "anyOf"), ("Type", "type"), ("Items", "items"), ("Description", "description"),
    ("Enum", "enum"), ("Properties", "properties"), ("Required", "required")))


def tools_value(tools: Sequence[dict[str, Any]]) -> GoSlice:
    """``.Tools`` (``templateTools``): printed as JSON; nil when the request has none."""
    return GoSlice([tool_value(tool) for tool in tools if isinstance(tool, dict)], nil=not tools, string=_json_text)


def tool_value(tool: dict[str, Any]) -> Struct:
    function = _object(tool.get("function"))
    params = _object(function.get("parameters"))
    properties = params.get("properties")
    properties = properties if isinstance(properties, dict) else None
    parameters = Struct("template.templateToolFunctionParameters", {
        "Type": _text(params.get("type")),
        "Defs": go_any(params.get("$defs")),
        "Items": go_any(params.get("items")),
        "Required": _strings(params.get("required")),
        "Properties": GoMap({k: property_value(v) for k, v in (properties or {}).items()},
                            nil=properties is None, string=_map_text),
    }, _PARAMETERS_JSON)
    return Struct("template.templateTool", {
        "Type": _text(tool.get("type")),
        "Items": go_any(tool.get("items")),
        "Function": Struct("template.templateToolFunction", {
            "Name": _text(function.get("name")),
            "Description": _text(function.get("description")),
            "Parameters": parameters,
        }, _FUNCTION_JSON),
    }, _TOOL_JSON, string=True)


def _strings(value: Any) -> GoSlice:
    items = [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
    return GoSlice(items, nil=not isinstance(value, list))


def _property_type_text(types: GoSlice) -> str:
    return "" if not types else types[0] if len(types) == 1 else "[" + " ".join(types) + "]"


def property_value(prop: Any) -> Struct:
    """A tool parameter's schema as Ollama keeps it (``api.ToolProperty``: other keys are dropped)."""
    prop = prop if isinstance(prop, dict) else {}
    kind = prop.get("type")
    types = [kind] if isinstance(kind, str) else [t for t in kind if isinstance(t, str)] if isinstance(kind, list) else []
    nested = prop.get("properties")
    any_of = prop.get("anyOf")
    enum = prop.get("enum")
    return Struct("api.ToolProperty", {
        "AnyOf": GoSlice([property_value(p) for p in any_of] if isinstance(any_of, list) else [],
                         nil=not isinstance(any_of, list)),
        "Type": GoSlice(types, nil=not types, string=_property_type_text,
                        json_value=lambda t: t[0] if len(t) == 1 else list(t)),
        "Items": go_any(prop.get("items")),
        "Description": _text(prop.get("description")),
        "Enum": GoSlice(go_any(enum) if isinstance(enum, list) else [], nil=not isinstance(enum, list)),
        "Properties": GoMap({k: property_value(v) for k, v in nested.items()}, ordered=True)
        if isinstance(nested, dict) else None,
        "Required": _strings(prop.get("required")),
    }, _PROPERTY_JSON)
