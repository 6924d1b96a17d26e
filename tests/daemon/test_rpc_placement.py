"""RPC workers on the daemon's side, without llama.cpp: the rpc_servers option and setting, the layer
split by the workers' free memory, the probe's answers, the runner's arguments and /api/ps."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from llmhost.config import Settings
from llmhost.daemon import workers
from llmhost.daemon.runner_client import Placement, ProcessRunnerFactory, RpcShare
from llmhost.daemon.workers import WorkerBusy, WorkerDevice, WorkerProbe, place, split
from llmhost.errors import ConfigError, RunnerError
from tests.daemon.conftest import daemon_state, start_harness
from tests.daemon.fakes import FakeClock, spec
from tests.support.processes import free_port
from tests.support.rpc_workers import skip_without_rpc

MiB = 1024**2
RECORD = SimpleNamespace(runner_key="sha256:" + "a" * 64, model_path=Path("/models/m.gguf"), projector_path=None)

# ---- the setting and the option ------------------------------------------------------------------------

SETTINGS = {
    "two workers": ("10.0.0.2:50052,10.0.0.3:50052", ("10.0.0.2:50052", "10.0.0.3:50052")),
    "spaces and an empty entry": (" a:1 , ,b:2 ", ("a:1", "b:2")),
    "empty: none": ("", ()),
}


@pytest.mark.parametrize("value,expected", SETTINGS.values(), ids=SETTINGS.keys())
def test_llmhost_rpc_servers_lists_the_workers(value, expected):
    assert Settings.from_env({"LLMHOST_RPC_SERVERS": value}).rpc_servers == expected


BAD = {
    "no port": "10.0.0.2",
    "port out of range": "a:70000",
    "an IPv6 literal": "::1:50052",
    "a worker twice": "a:1,a:1",
    "seventeen workers": ",".join(f"h:{i}" for i in range(1, 18)),
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_a_malformed_llmhost_rpc_servers_stops_the_daemon_naming_it(value):
    with pytest.raises(ConfigError, match="LLMHOST_RPC_SERVERS"):
        Settings.from_env({"LLMHOST_RPC_SERVERS": value})


OPTIONS = {
    "the setting, without the option": ({}, ("w:1",)),
    "the option replaces the setting": ({"rpc_servers": "x:2,y:3"}, ("x:2", "y:3")),
    "an empty option turns them off for this model": ({"rpc_servers": ""}, ()),
}


@pytest.mark.parametrize("load,expected", OPTIONS.values(), ids=OPTIONS.keys())
def test_the_rpc_servers_option_chooses_the_workers_of_a_runner(tmp_path, template_store, load, expected):
    state = daemon_state(tmp_path, template_store, {"LLMHOST_RPC_SERVERS": "w:1"})
    try:
        assert state.load_spec(RECORD, load).rpc_servers == expected
    finally:
        state.close()


async def test_a_bad_rpc_servers_option_is_a_400_naming_it(tmp_path, template_store):
    harness = await start_harness(tmp_path, template_store)
    try:
        r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                             "options": {"rpc_servers": "nope"}})
        assert r.status == 400
        assert "rpc_servers" in (await r.json())["error"]
        assert harness.factory.started == []
    finally:
        await harness.client.close()


def test_other_workers_need_another_runner():
    assert not spec(rpc_servers=("a:1",)).covers(spec())
    assert not spec().covers(spec(rpc_servers=("a:1",)))
    assert spec(rpc_servers=("a:1", "b:2")).covers(spec(rpc_servers=("a:1", "b:2")))


# ---- the split ------------------------------------------------------------------------------------------

SPLITS = {
    # sizes: blocks then the output layer; room: each device's free memory less the reserve
    "equal room: halves, the output layer with the last half": ([10] * 5 + [4], [100, 100], None, (3, 3)),
    "room in proportion": ([10] * 8, [60, 20], None, (6, 2)),
    "the proportional share overfills one: filled in turn": ([15, 15, 2, 2], [30, 10], None, (2, 2)),
    "not everything fits: the last layers go, the first stay": ([10] * 6, [25, 25], None, (2, 2)),
    "num_gpu caps the layers": ([10] * 6, [100, 100], 2, (1, 1)),
    "num_gpu 0: none": ([10] * 6, [100, 100], 0, (0, 0)),
    "no room: none": ([10] * 3, [5, 0], None, (0, 0)),
    "one worker": ([10] * 3, [1000], None, (3,)),
}


@pytest.mark.parametrize("sizes,room,most,expected", SPLITS.values(), ids=SPLITS.keys())
def test_layers_are_split_over_the_workers_as_they_fit(sizes, room, most, expected):
    counts = split(sizes, room, most)
    assert counts == expected
    start = len(sizes) - sum(counts)
    for count, free in zip(counts, room):
        assert sum(sizes[start:start + count]) <= free, "a device gets no more than its room"
        start += count


def info(blocks: int = 4, layer: int = 100 * MiB, output: int = 50 * MiB, tied: bool = False) -> SimpleNamespace:
    """GGUF metadata as the estimate reads it (no KV cache: no heads); the input embedding is as large
    as the output layer, which is that embedding when ``tied``."""
    total = blocks * layer + output + (0 if tied else output)
    return SimpleNamespace(block_count=blocks, layer_bytes=dict.fromkeys(range(blocks), layer), output_bytes=output,
                           total_tensor_bytes=total, head_count=1, head_count_kv=1, embedding_length=0,
                           key_length=0, value_length=0)


def test_a_placement_tells_the_runner_its_layers_and_ps_each_workers_bytes():
    devices = [WorkerDevice("a:1", 0, 10_000 * MiB, 10_000 * MiB), WorkerDevice("b:2", 0, 10_000 * MiB, 10_000 * MiB)]
    placement = place(info(), spec(num_ctx=512, rpc_servers=("a:1", "b:2")), devices)
    assert placement.rpc_layers == (2, 3) or placement.rpc_layers == (3, 2)
    assert placement.gpu_layers == 5, "every block and the output layer"
    assert sum(s.bytes for s in placement.rpc) == 4 * 100 * MiB + 50 * MiB
    assert [s.server for s in placement.rpc] == ["a:1", "b:2"]


@pytest.mark.parametrize("tied,freed", [(False, 4 * 100 * MiB + 50 * MiB), (True, 4 * 100 * MiB)],
                         ids=["own output matrix: all it holds leaves here", "tied embeddings: the input copy stays"])
def test_the_estimate_counts_only_what_leaves_this_machine(tied, freed):
    devices = [WorkerDevice("a:1", 0, 10_000 * MiB, 10_000 * MiB)]
    model = info(tied=tied)
    placement = place(model, spec(num_ctx=512, rpc_servers=("a:1",)), devices)
    assert placement.rpc[0].bytes == 4 * 100 * MiB + 50 * MiB, "the worker holds the output layer either way"
    assert workers.freed_here(model, placement) == freed


def test_a_worker_without_room_gets_nothing_and_the_model_stays_here():
    devices = [WorkerDevice("a:1", 0, 64 * MiB, 64 * MiB)]
    placement = place(info(), spec(rpc_servers=("a:1",)), devices)
    assert placement.gpu_layers == 0
    assert placement.rpc == (RpcShare("a:1", 0, 0),)


# ---- asking the workers -----------------------------------------------------------------------------------


class Asker:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked = 0

    def __call__(self, servers):
        self.asked += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


DEVICES = [WorkerDevice("a:1", 0, 1, 2)]


def test_an_answer_is_reused_for_a_moment_then_asked_again():
    clock, ask = FakeClock(), Asker(DEVICES, DEVICES)
    probe = WorkerProbe(ask, ttl=2.0, clock=clock)
    probe.devices(("a:1",))
    probe.devices(("a:1",))
    assert ask.asked == 1
    clock.advance(3)
    probe.devices(("a:1",))
    assert ask.asked == 2


def test_the_estimate_takes_any_answer_already_had():
    clock, ask = FakeClock(), Asker(DEVICES)
    probe = WorkerProbe(ask, clock=clock)
    probe.devices(("a:1",))
    clock.advance(3600)
    assert probe.devices(("a:1",), fresh=False) == DEVICES
    assert ask.asked == 1


def test_a_busy_worker_is_named():
    probe = WorkerProbe(Asker(WorkerBusy("RPC worker a:1 accepted the connection but did not answer")))
    with pytest.raises(WorkerBusy, match="a:1"):
        probe.devices(("a:1",))


def test_the_probe_names_a_worker_that_is_not_there():
    skip_without_rpc()
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RunnerError, match=f"failed to load model: .*{address}"):
        workers.run_probe((address,))


def test_the_probe_names_an_address_that_does_not_speak_the_protocol():
    skip_without_rpc()
    with socket.socket() as listener:  # accepts, then hangs up at once: not an RPC worker
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        hang_up = threading.Thread(target=lambda: [listener.accept()[0].close() for _ in range(3)], daemon=True)
        hang_up.start()
        with pytest.raises(RunnerError, match=f"failed to load model: RPC worker {address} failed: .*same llmhost"):
            workers.run_probe((address,))


# ---- the runner's arguments and /api/ps --------------------------------------------------------------------


def test_the_runner_is_told_its_workers_and_their_layers(tmp_path):
    factory = ProcessRunnerFactory(tmp_path, load_timeout=10)
    placement = Placement(gpu_layers=5, rpc_layers=(2, 3), rpc=(RpcShare("a:1", 2, 1), RpcShare("b:2", 3, 1)))
    args = factory._args(spec(rpc_servers=("a:1", "b:2")), tmp_path / "r.sock", placement)
    assert args[args.index("--rpc") + 1] == "a:1,b:2"
    assert args[args.index("--rpc-layers") + 1] == "2,3"
    assert args[args.index("--gpu-layers") + 1] == "5"
    assert "--rpc" not in factory._args(spec(), tmp_path / "r.sock", Placement())


async def test_ps_shows_what_each_worker_holds(tmp_path, template_store):
    harness = await start_harness(tmp_path, template_store)
    try:
        r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
        assert r.status == 200
        plain = (await (await harness.client.get("/api/ps")).json())["models"][0]
        assert "rpc" not in plain, "no workers, no field"
        harness.factory.started[0].rpc = (RpcShare("a:1", 10, 300 * MiB), RpcShare("b:2", 11, 320 * MiB))
        model = (await (await harness.client.get("/api/ps")).json())["models"][0]
        assert model["rpc"] == [{"server": "a:1", "layers": 10, "bytes": 300 * MiB},
                                {"server": "b:2", "layers": 11, "bytes": 320 * MiB}]
    finally:
        await harness.client.close()
