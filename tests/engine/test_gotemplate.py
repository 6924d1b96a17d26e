"""The Go text/template interpreter: each construct, with outputs derived by hand from Go's rules.

Plain Go here (``gotemplate.render``: the template executed with ``DATA`` as dot); Ollama's use of
templates (``.Messages``, per-turn ``.Prompt``…) is tests/engine/test_ollama_templates.py.
"""

from __future__ import annotations

import pytest

from llmhost.engine.gotemplate import GoTemplateExecError, GoTemplateSyntaxError, render
from llmhost.engine.gotemplate.values import GoMap, Struct
from llmhost.engine.sandbox import RenderLimits
from llmhost.errors import RenderLimitError

DATA = {
    "Name": "Ada",
    "Empty": "",
    "Zero": 0,
    "Pi": 3.5,
    "Big": 2000000.0,
    "Whole": 3.0,
    "Yes": True,
    "No": False,
    "Nil": None,
    "List": ["a", "b", "c"],
    "Nums": [3, 1, 2],
    "NoItems": [],
    "Map": {"b": 2, "a": 1, "c": 3},
    "Nested": {"Inner": {"Deep": "found"}},
    "Html": '<a href="x">&</a>',
    "Msg": Struct("*template.templateMessage", {"Role": "user", "Content": "hi"}),
    "Args": GoMap({"city": "Paris"}, string=lambda m: '{"city":"Paris"}'),
}

CASES = {
    # text and white space
    "plain text": ("Hello, world.\n", "Hello, world.\n"),
    "left trim eats spaces and newlines": ("a  \n\t {{- .Name }}", "aAda"),
    "right trim eats the following white space": ("{{ .Name -}} \n\n b", "Adab"),
    "both trims": ("x\n{{- .Name -}}\ny", "xAday"),
    "a minus without a space is a number": ("{{-3}}", "-3"),
    "comment": ("a{{/* not printed */}}b", "ab"),
    "trimmed comment": ("a \n{{- /* gone */ -}}\n b", "ab"),
    "newlines inside an action": ("{{ if\n.Yes\n}}y{{ end }}", "y"),
    # printing values
    "string": ("{{ .Name }}", "Ada"),
    "int": ("{{ 42 }} {{ -7 }} {{ 0x1F }} {{ 1_000 }} {{ 017 }}", "42 -7 31 1000 15"),
    "char constant": ("{{ 'a' }}", "97"),
    "floats print shortest": ("{{ .Pi }} {{ .Whole }} {{ .Big }} {{ 1e-5 }} {{ 0.0001 }}", "3.5 3 2e+06 1e-05 0.0001"),
    "bools": ("{{ .Yes }} {{ .No }} {{ true }}", "true false true"),
    "a nil value prints <no value>": ("[{{ .Nil }}]", "[<no value>]"),
    "a missing key prints <no value>": ("[{{ .Missing }}]", "[<no value>]"),
    "slice": ("{{ .List }} {{ .Nums }}", "[a b c] [3 1 2]"),
    "map in key order": ("{{ .Map }}", "map[a:1 b:2 c:3]"),
    "struct fields in order": ("{{ .Msg }}", "{user hi}"),
    "a String method is used": ("{{ .Args }}", '{"city":"Paris"}'),
    "raw string keeps backslashes": ("{{ `a\\n` }}", "a\\n"),
    "quoted string escapes": ('{{ "tab\\there" }}', "tab\there"),
    # fields
    "chained fields": ("{{ .Nested.Inner.Deep }}", "found"),
    "field of a struct": ("{{ .Msg.Role }}", "user"),
    "field of a parenthesised value": ("{{ (index .Nested \"Inner\").Deep }}", "found"),
    # variables
    "declare and use": ("{{ $n := .Name }}{{ $n }}{{ $n }}", "AdaAda"),
    "assign changes the outer variable": ('{{ $x := "a" }}{{ if .Yes }}{{ $x = "b" }}{{ end }}{{ $x }}', "b"),
    "root variable inside with": ("{{ with .Nested }}{{ $.Name }}:{{ .Inner.Deep }}{{ end }}", "Ada:found"),
    "dollar alone is the data": ("{{ $.Msg.Content }}", "hi"),
    # if
    "if true": ("{{ if .Yes }}y{{ end }}", "y"),
    "if else": ("{{ if .No }}y{{ else }}n{{ end }}", "n"),
    "else if chain": ("{{ if .No }}1{{ else if .Zero }}2{{ else if .Name }}3{{ else }}4{{ end }}", "3"),
    "empty things are false": ("{{ if .Empty }}a{{ end }}{{ if .Zero }}b{{ end }}{{ if .NoItems }}c{{ end }}"
                               "{{ if .Nil }}d{{ end }}{{ if .Missing }}e{{ end }}.", "."),
    "structs are true": ("{{ if .Msg }}t{{ end }}", "t"),
    "declaration in if scope": ("{{ if $v := .Name }}{{ $v }}{{ end }}", "Ada"),
    # with
    "with sets dot": ("{{ with .Nested.Inner }}{{ .Deep }}{{ end }}", "found"),
    "with else": ("{{ with .Empty }}x{{ else }}none{{ end }}", "none"),
    "else with": ("{{ with .Empty }}x{{ else with .Name }}{{ . }}{{ end }}", "Ada"),
    # range
    "range over a slice": ("{{ range .List }}<{{ . }}>{{ end }}", "<a><b><c>"),
    "range with index and element": ("{{ range $i, $e := .List }}{{ $i }}{{ $e }} {{ end }}", "0a 1b 2c "),
    "range with one variable is the element": ("{{ range $e := .List }}{{ $e }}{{ end }}", "abc"),
    "range over a map in key order": ("{{ range $k, $v := .Map }}{{ $k }}={{ $v }};{{ end }}", "a=1;b=2;c=3;"),
    "range else": ("{{ range .NoItems }}x{{ else }}empty{{ end }}", "empty"),
    "range over nil is empty": ("{{ range .Nil }}x{{ else }}none{{ end }}", "none"),
    "range over an int": ("{{ range 3 }}{{ . }}{{ end }}", "012"),
    "break": ("{{ range .List }}{{ if eq . \"b\" }}{{ break }}{{ end }}{{ . }}{{ end }}", "a"),
    "continue": ("{{ range .List }}{{ if eq . \"b\" }}{{ continue }}{{ end }}{{ . }}{{ end }}", "ac"),
    "root inside range": ("{{ range .List }}{{ $.Name }}{{ end }}", "AdaAdaAda"),
    "variables reset each iteration": ('{{ range .List }}{{ $x := . }}{{ $x }}{{ end }}', "abc"),
    # define, template, block
    "define and call with dot": ('{{ define "t" }}[{{ . }}]{{ end }}{{ template "t" .Name }}', "[Ada]"),
    "template without a pipeline gets no dot": ('{{ define "t" }}({{ . }}){{ end }}{{ template "t" }}', "(<no value>)"),
    "a template has its own variables": ('{{ define "t" }}{{ $.Deep }}{{ end }}{{ template "t" .Nested.Inner }}',
                                         "found"),
    "block defines and runs": ('{{ block "b" .List }}{{ len . }}{{ end }}', "3"),
    "define is not printed where written": ('a{{ define "x" }}X{{ end }}b', "ab"),
    # pipelines
    "pipe into a function": ("{{ .Name | len }}", "3"),
    "pipe is the last argument": ('{{ "b" | printf "%s-%s" "a" }}', "a-b"),
    "parenthesised call as argument": ("{{ len (index .Nested \"Inner\") }}", "1"),
    # and / or / not
    "and returns the first false": ('[{{ and .Name .Empty "z" }}]', "[]"),
    "and returns the last when all true": ("{{ and 1 .Name }}", "Ada"),
    "or returns the first true": ('{{ or .Empty .Zero "x" }}', "x"),
    "and stops early": ("{{ and .No (index .List 99) }}", "false"),
    "not": ("{{ not .Empty }} {{ not .Name }}", "true false"),
    # comparisons
    "eq": ('{{ eq .Name "Ada" }} {{ eq 1 2 }}', "true false"),
    "eq with several": ('{{ eq .Name "Bob" "Ada" }}', "true"),
    "ne": ('{{ ne .Name "Bob" }}', "true"),
    "lt le gt ge": ("{{ lt 1 2 }}{{ le 2 2 }}{{ gt 1 2 }}{{ ge 3 2 }}", "truetruefalsetrue"),
    "strings compare": ('{{ lt "apple" "banana" }}', "true"),
    "eq with nil is false": ('{{ eq .Nil "x" }}', "false"),
    # collections
    "len of a string counts bytes": ('{{ len "héllo" }}', "6"),
    "len of a map": ("{{ len .Map }}", "3"),
    "index a slice": ("{{ index .List 1 }}", "b"),
    "index a map": ('{{ index .Map "c" }}', "3"),
    "index nested": ('{{ index .Nested "Inner" "Deep" }}', "found"),
    "index a missing key": ('{{ index .Map "zz" }}', "<no value>"),
    "slice a slice": ("{{ slice .List 1 }} {{ slice .List 0 2 }}", "[b c] [a b]"),
    "slice a string": ('{{ slice "hello" 1 3 }}', "el"),
    # printing functions
    "print adds spaces between non-strings": ('{{ print 1 2 "x" 3 "y" "z" }}', "1 2x3yz"),
    "println": ('{{ println "a" 1 }}', "a 1\n"),
    "printf verbs": ('{{ printf "%s|%d|%5.2f|%q|%v|%x|%t|%03d|%-3s|" "s" 42 3.14159 "q" .List 255 true 7 "l" }}',
                     's|42| 3.14|"q"|[a b c]|ff|true|007|l  |'),
    "printf mismatches": ('{{ printf "%d %s" "x" }}', "%!d(string=x) %!s(MISSING)"),
    "html": ("{{ html .Html }}", "&lt;a href=&#34;x&#34;&gt;&amp;&lt;/a&gt;"),
    "js": ("{{ js \"it's <b>\" }}", "it\\'s \\u003Cb\\u003E"),
    "urlquery": ('{{ urlquery "a b&c" }}', "a+b%26c"),
    # Ollama's functions
    "json of a map sorts keys and escapes html": ('{{ json .Map }} {{ json "<&>" }}', '{"a":1,"b":2,"c":3} "\\u003c\\u0026\\u003e"'),
    "json of a struct keeps field order": ("{{ json .Msg }}", '{"Role":"user","Content":"hi"}'),
    "json of floats as Go writes them": ("{{ json .Whole }} {{ json 1e21 }} {{ json 0.0000001 }}", "3 1e+21 1e-7"),
    "toTypeScriptType of anything else": ("{{ toTypeScriptType .Name }}", "any"),
}


@pytest.mark.parametrize("source, expected", CASES.values(), ids=CASES.keys())
def test_construct(source, expected):
    assert render(source, DATA) == expected


def test_current_date_is_today():
    from datetime import date, timedelta

    assert render('{{ currentDate }} {{ yesterdayDate "ignored" }}', {}) == \
        f"{date.today().isoformat()} {(date.today() - timedelta(days=1)).isoformat()}"


SYNTAX_ERRORS = {
    "unclosed action": ("{{ .Name ", "1:1: unclosed action"),
    "unknown function": ("ok\n  {{ nope 1 }}", '2:6: function "nope" not defined'),
    "undefined variable": ("{{ $x }}", '1:4: undefined variable "$x"'),
    "a variable ends with its block": ("{{ if .Yes }}{{ $x := 1 }}{{ end }}{{ $x }}", 'undefined variable "$x"'),
    "end without a block": ("a{{ end }}", "1:5: unexpected {{end}}"),
    "missing end": ("{{ if .Yes }}x", "unexpected EOF"),
    "break outside range": ("{{ break }}", "{{break}} outside {{range}}"),
    "else outside a block": ("{{ else }}", "unexpected {{else}}"),
    "two elses": ("{{ if 1 }}a{{ else }}b{{ else }}c{{ end }}", "expected end; found {{else}}"),
    "empty action": ("{{ }}", "missing value for command"),
    "literal later in a pipeline": ('{{ .Name | "x" }}', "non executable command in pipeline stage 2"),
    "bad number": ("{{ 12abc }}", "bad number syntax"),
    "unterminated string": ('{{ "abc }}', "unterminated quoted string"),
    "unclosed comment": ("{{/* never closed", "unclosed comment"),
    "unclosed paren": ("{{ len (.List }}", "unclosed left paren"),
    "defined twice": ('{{ define "a" }}1{{ end }}{{ define "a" }}2{{ end }}', "multiple definition"),
    "two variables outside range": ("{{ with $a, $b := .Map }}{{ end }}", "too many declarations in with"),
    "assign to an undeclared variable": ("{{ $y = 1 }}", 'undefined variable "$y"'),
}


@pytest.mark.parametrize("source, message", SYNTAX_ERRORS.values(), ids=SYNTAX_ERRORS.keys())
def test_syntax_error_names_the_position(source, message):
    with pytest.raises(GoTemplateSyntaxError) as error:
        render(source, DATA, name="TEMPLATE")
    assert message in str(error.value)
    assert str(error.value).startswith("invalid Go template TEMPLATE at ")
    assert error.value.status == 400


EXEC_ERRORS = {
    "index out of range": ("{{ index .List 5 }}", "1:4: error calling index: index out of range: 5"),
    "index a map with a number": ("{{ index .Map 1 }}", "error calling index: value has type int; should be string"),
    "field of a string": ("{{ .Name.First }}", "1:4: can't evaluate field First in type string"),
    "field of a missing value": ("{{ .Missing.Field }}", "nil pointer evaluating interface {}.Field"),
    "unknown struct field": ("{{ .Msg.Nope }}", "can't evaluate field Nope in type *template.templateMessage"),
    "wrong number of arguments": ("{{ len 1 2 }}", "wrong number of args for len: want 1 got 2"),
    "len of a number": ("{{ len 3 }}", "error calling len: len of type int"),
    "comparing int with float": ("{{ eq 1 1.0 }}", "error calling eq: incompatible types for comparison"),
    "comparing bools by order": ("{{ lt true false }}", "invalid type for comparison"),
    "argument to a non-function": ("{{ .Name 1 }}", "Name is not a method but has arguments"),
    "nil is not a command": ("{{ nil }}", "nil is not a command"),
    "call is refused": ("{{ call .Name }}", "call is not supported"),
    "template not defined": ('{{ template "nope" }}', 'template "nope" not defined'),
    "range over a string": ("{{ range .Name }}{{ end }}", "range can't iterate over Ada"),
    "printf needs a string format": ("{{ printf 3 }}", "wrong type for value; expected string; got int"),
}


@pytest.mark.parametrize("source, message", EXEC_ERRORS.values(), ids=EXEC_ERRORS.keys())
def test_execution_error_names_the_position(source, message):
    with pytest.raises(GoTemplateExecError) as error:
        render(source, DATA, name='"template"')
    assert message in str(error.value)
    assert str(error.value).startswith('error executing Go template "template" at ')
    assert error.value.status == 400


LIMITS = RenderLimits(seconds=5.0, steps=20_000, chars=4096, range_items=1000)


@pytest.mark.parametrize(
    "source, message",
    [
        pytest.param("{{ range 1000 }}{{ range 1000 }}{{ end }}{{ end }}", "steps", id="steps"),
        pytest.param("{{ range 900 }}xxxxxx{{ end }}", "characters", id="output-size"),
        pytest.param('{{ printf "%99999999d" 1 }}', "characters", id="printf-width"),
        pytest.param("{{ range 5000 }}{{ end }}", "more than the limit of 1000", id="range-items"),
        pytest.param('{{ define "r" }}{{ template "r" . }}{{ end }}{{ template "r" . }}', "nested too deeply",
                     id="recursion"),
    ],
)
def test_a_strangers_template_is_bounded(source, message):
    with pytest.raises((RenderLimitError, GoTemplateExecError), match=message):
        render(source, DATA, budget=LIMITS.budget())


def test_deep_nesting_in_the_source_is_refused_not_a_crash():
    source = "{{ if 1 }}" * 500 + "x" + "{{ end }}" * 500
    with pytest.raises(GoTemplateSyntaxError, match="nested more than 100 levels"):
        render(source, DATA)
