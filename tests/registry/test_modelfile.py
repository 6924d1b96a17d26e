from datetime import datetime, timezone
from pathlib import Path

import pytest

from llmhost.errors import ModelfileError
from llmhost.registry import manifest as media
from llmhost.registry.manifest import Layer, Manifest
from llmhost.registry.modelfile import Modelfile, parse_modelfile, render_modelfile
from llmhost.registry.names import ModelName
from llmhost.registry.record import ModelRecord

PARSED = {
    "just FROM": ("FROM smollm2", Modelfile(from_="smollm2")),
    "commands any case": ("from m\nSystem be brief\nparameter temperature 0.2",
                          Modelfile(from_="m", system="be brief", parameters={"temperature": 0.2})),
    "comments and blank lines": ("# a comment\n\n  FROM m  \n   # indented comment\n", Modelfile(from_="m")),
    "quoted value": ('FROM m\nSYSTEM "You are \\"terse\\"."', Modelfile(from_="m", system='You are "terse".')),
    "multi-line template": ('FROM m\nTEMPLATE """{{ .System }}\nUSER: {{ .Prompt }}"""',
                            Modelfile(from_="m", template="{{ .System }}\nUSER: {{ .Prompt }}")),
    "multi-line keeps blank lines": ('FROM m\nSYSTEM """\nline one\n\n# not a comment\n"""',
                                     Modelfile(from_="m", system="\nline one\n\n# not a comment\n")),
    "one-line triple quotes": ('FROM m\nSYSTEM """hi"""', Modelfile(from_="m", system="hi")),
    "stop accumulates": ('FROM m\nPARAMETER stop <|im_end|>\nPARAMETER stop "<|im_start|>"\nPARAMETER num_ctx 4096',
                         Modelfile(from_="m", parameters={"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 4096})),
    "typed parameters": ("FROM m\nPARAMETER top_k 20\nPARAMETER use_mmap false\nPARAMETER Seed 7",
                         Modelfile(from_="m", parameters={"top_k": 20, "use_mmap": False, "seed": 7})),
    "messages": ('FROM m\nMESSAGE user Is the sky blue?\nMESSAGE Assistant """Yes,\nit is."""',
                 Modelfile(from_="m", messages=[{"role": "user", "content": "Is the sky blue?"},
                                                {"role": "assistant", "content": "Yes,\nit is."}])),
    "license and adapter repeat": ('FROM ./m.gguf\nADAPTER a.gguf\nADAPTER b.gguf\nLICENSE MIT\nLICENSE """A\n2"""',
                                   Modelfile(from_="./m.gguf", adapters=["a.gguf", "b.gguf"], license=["MIT", "A\n2"])),
    "draft (parsed; refused when creating)": ("FROM ./m.gguf\ndraft ./small.gguf",
                                              Modelfile(from_="./m.gguf", drafts=["./small.gguf"])),
    "empty quoted system": ('FROM m\nSYSTEM ""', Modelfile(from_="m", system="")),
    "multi-line in plain quotes (ollama show)": ('FROM m\nTEMPLATE "{{ .System }}\n\nUSER: {{ .Prompt }}"\nSYSTEM hi',
                                                 Modelfile(from_="m", template="{{ .System }}\n\nUSER: {{ .Prompt }}",
                                                           system="hi")),
    "FROM later than other commands": ("SYSTEM s\nFROM m", Modelfile(from_="m", system="s")),
}


@pytest.mark.parametrize("text,expected", PARSED.values(), ids=PARSED.keys())
def test_parse(text, expected):
    assert parse_modelfile(text) == expected


ERRORS = {
    "unknown command": ("FROM m\n\nPROMPT hi", '(line 3): command must be one of "from", "license", "template", '
                        '"system", "adapter", "draft", "parameter", or "message"'),
    "DRAFT without a value": ("FROM m\nDRAFT", "(line 2): missing value for DRAFT"),
    "no FROM": ("SYSTEM hi\nPARAMETER top_k 1", "(line 2): no FROM line"),
    "empty file": ("", "(line 1): no FROM line"),
    "bad role": ("FROM m\nMESSAGE robot hi", '(line 2): role must be one of "system", "user", or "assistant"'),
    "unknown parameter": ("FROM m\nPARAMETER warmth 3", "(line 2): unknown parameter 'warmth'"),
    "wrong parameter type": ("FROM m\nPARAMETER top_k high", "(line 2): invalid value for parameter 'top_k'"),
    "unterminated triple quote": ('FROM m\nTEMPLATE """{{ .Prompt }}\nmore', "(line 2): unterminated multi-line"),
    "unterminated quote": ('FROM m\nSYSTEM "open', "(line 2): unterminated quoted string"),
    "text after closing quotes": ('FROM m\nSYSTEM """a\nb""" c', '(line 3): unexpected text after closing """'),
    "FROM without value": ("FROM", "(line 1): missing value for FROM"),
    "PARAMETER without value": ("FROM m\nPARAMETER top_k", "(line 2): missing value for PARAMETER"),
    "MESSAGE without role": ("FROM m\nMESSAGE", "(line 2): missing role after MESSAGE"),
}


@pytest.mark.parametrize("text,message", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_the_line(text, message):
    with pytest.raises(ModelfileError) as err:
        parse_modelfile(text)
    assert str(err.value).startswith(message)
    assert err.value.status == 400


class FakeInfo:
    chat_template = "{{ gguf template }}"


def record(**changes) -> ModelRecord:
    config = Layer(media.CONFIG, "sha256:" + "c" * 64, 2)
    fields = dict(
        name=ModelName.parse("mine:v1"), manifest=Manifest(config, ()), digest="d" * 64, size=2,
        modified_at=datetime.now(timezone.utc), model_path=Path("/store/blobs/sha256-" + "a" * 64),
        template=None, system="Be brief.\nAlways.",
        parameters={"stop": ["<|im_end|>", " spaced"], "temperature": 0.7, "use_mmap": True},
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
        license=["MIT"], info=FakeInfo(), config={},
    )
    fields.update(changes)
    return ModelRecord(**fields)


def test_render_shows_what_made_the_model():
    text = render_modelfile(record())
    assert text.startswith('# Modelfile generated by "llm show"')
    assert "# FROM mine:v1" in text
    assert "\nFROM /store/blobs/sha256-" + "a" * 64 + "\n" in text
    assert 'TEMPLATE """{{ gguf template }}"""' in text
    assert "PARAMETER stop <|im_end|>\nPARAMETER stop \"\"\" spaced\"\"\"\nPARAMETER temperature 0.7" in text
    assert "PARAMETER use_mmap true" in text
    assert "MESSAGE assistant hello there" in text
    assert text.index("SYSTEM") < text.index("PARAMETER") < text.index("LICENSE") < text.index("MESSAGE")


def test_rendered_modelfile_parses_back_to_the_same_model():
    original = record(template="{{ .Prompt }}\n")
    parsed = parse_modelfile(render_modelfile(original))
    assert parsed.from_ == str(original.model_path)
    assert parsed.template == original.template and parsed.system == original.system
    assert parsed.parameters == original.parameters
    assert parsed.messages == original.messages and parsed.license == original.license
