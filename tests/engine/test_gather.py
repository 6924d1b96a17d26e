"""An idle engine that knows of requests still being prepared (``Engine.expect``: the runner announces
each one while it renders and tokenizes it) holds its first step for them, so that a burst (chats in
lock-step, a client's parallel calls) starts in one step rather than the first alone, for which the
rest would wait a whole step; and it never waits for nothing, nor longer than its window."""

from __future__ import annotations

import time

import pytest

from tests.support.engine_harness import EngineHarness

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 4}
LONG = 30.0  # a window no test waits out: only the settling may end the wait


def body(i: int) -> dict:
    return {"prompt": f"Request {i}: tell me about the sea.", "options": GREEDY}


@pytest.fixture
def harness(model):
    h = EngineHarness(model, ctx_size=256, parallel=4, batch=64)
    yield h
    h.close()


def test_a_burst_still_being_prepared_starts_in_one_step(harness):
    harness.engine.gather_window = LONG
    settles = [harness.engine.expect() for _ in range(3)]
    started = []
    for i, settle in enumerate(settles):
        started.append(harness.submit(body(i)))
        settle()
        time.sleep(0.05)  # time enough for an engine that does not wait to start the first alone
    for _, sink in started:
        sink.wait(10)
    assert len({seq.t_prefill for seq, _ in started}) == 1  # the first step evaluated all three


def test_a_lone_request_does_not_wait(harness):
    harness.engine.gather_window = LONG
    _, sink = harness.submit(body(0))
    sink.wait(10)


def test_a_request_given_up_while_being_prepared_is_not_waited_for(harness):
    harness.engine.gather_window = LONG
    coming, given_up = harness.engine.expect(), harness.engine.expect()
    _, sink = harness.submit(body(0))
    coming()
    time.sleep(0.05)
    assert not sink.first.is_set()  # still waiting for the other one
    given_up()  # e.g. its template failed: it never reaches the engine
    given_up()  # settling twice counts once
    sink.wait(10)


def test_the_wait_ends_with_the_window(harness):
    harness.engine.gather_window = 0.2
    harness.engine.expect()  # announced, never settled
    started = time.monotonic()
    _, sink = harness.submit(body(0))
    sink.wait(10)
    assert time.monotonic() - started >= 0.2  # it did wait, and then went on
