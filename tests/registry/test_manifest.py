import json

import pytest

from llmhost.errors import BadRequest, InvalidDigest, InvalidManifest
from llmhost.registry import manifest as media
from llmhost.registry.manifest import Layer, Manifest, check_digest

GOOD = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def doc(**changes):
    base = {
        "schemaVersion": 2,
        "mediaType": media.MANIFEST_V2,
        "config": {"mediaType": media.CONFIG, "digest": GOOD, "size": 10},
        "layers": [{"mediaType": media.MODEL, "digest": OTHER, "size": 1000, "from": "base:latest"}],
    }
    base.update(changes)
    return json.dumps(base).encode()


def layer(**changes):
    base = {"mediaType": media.MODEL, "digest": OTHER, "size": 1}
    base.update(changes)
    return [base]


def test_parse_and_round_trip():
    manifest = Manifest.parse(doc())
    assert manifest.config == Layer(media.CONFIG, GOOD, 10)
    assert manifest.layers == (Layer(media.MODEL, OTHER, 1000, "base:latest"),)
    assert manifest.size == 1010
    assert Manifest.parse(manifest.to_bytes()) == manifest
    assert manifest.to_bytes().startswith(b'{"schemaVersion":2,"mediaType":')


def test_unknown_but_well_formed_ollama_layer_types_are_kept():
    manifest = Manifest.parse(doc(layers=layer(mediaType="application/vnd.ollama.image.draft")))
    assert manifest.layers[0].media_type == "application/vnd.ollama.image.draft"


REFUSED = {
    "traversal digest": (doc(layers=layer(digest="sha256:../../x")), "sha256:../../x"),
    "traversal in config": (doc(config={"mediaType": media.CONFIG, "digest": "sha256:../../etc/passwd", "size": 1}),
                            "config"),
    "short digest": (doc(layers=layer(digest="sha256:abc")), "invalid digest"),
    "uppercase digest": (doc(layers=layer(digest="sha256:" + "A" * 64)), "invalid digest"),
    "other algorithm": (doc(layers=layer(digest="sha512:" + "a" * 64)), "invalid digest"),
    "dash separator": (doc(layers=layer(digest="sha256-" + "a" * 64)), "invalid digest"),
    "missing digest": (doc(layers=[{"mediaType": media.MODEL, "size": 1}]), "invalid digest"),
    "wrong layer media type": (doc(layers=layer(mediaType="text/html")), 'unsupported mediaType "text/html"'),
    "wrong config media type": (doc(config={"mediaType": media.MODEL, "digest": GOOD, "size": 1}), "config mediaType"),
    "wrong manifest media type": (doc(mediaType="application/vnd.oci.image.index.v1+json"), "mediaType must be"),
    "schema version 1": (doc(schemaVersion=1), "schemaVersion must be 2"),
    "schema version true": (doc(schemaVersion=True), "schemaVersion must be 2"),
    "negative size": (doc(layers=layer(size=-1)), "non-negative integer"),
    "float size": (doc(layers=layer(size=1.5)), "non-negative integer"),
    "string size": (doc(layers=layer(size="12")), "non-negative integer"),
    "layers not a list": (doc(layers={"a": 1}), "layers must be a list"),
    "layer not an object": (doc(layers=["x"]), "must be an object"),
    "not JSON": (b"<html>", "not JSON"),
    "JSON array": (b"[]", "JSON object"),
    "huge": (b" " * (media.MAX_MANIFEST_BYTES + 1), "larger than"),
}


@pytest.mark.parametrize("data,problem", REFUSED.values(), ids=REFUSED.keys())
def test_bad_manifests_are_refused_with_a_400(data, problem):
    with pytest.raises(InvalidManifest) as err:
        Manifest.parse(data)
    assert problem in str(err.value)
    assert isinstance(err.value, BadRequest) and err.value.status == 400


@pytest.mark.parametrize("digest", ["sha256:../../x", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "", None, "a" * 64,
                                    "sha256:" + "a" * 64 + "/../x", "sha256:" + "a" * 64 + "\n"],
                         ids=["traversal", "uppercase", "short", "empty", "none", "no prefix", "suffix", "newline"])
def test_check_digest_refuses(digest):
    with pytest.raises(InvalidDigest, match=r'^invalid digest ".*": expected sha256:<64 hex>$') as err:
        check_digest(digest)
    assert "\n" not in str(err.value) and err.value.status == 400


def test_check_digest_accepts_and_returns():
    assert check_digest(GOOD) == GOOD
