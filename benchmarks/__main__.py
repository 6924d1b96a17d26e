"""``scripts/bench [name ...]``: run benchmarks and print their numbers as JSON lines."""

from __future__ import annotations

import json
import sys
import time

from benchmarks import (
    cli,
    flash,
    hop,
    idle,
    kernels,
    peers,
    pull,
    relay,
    residency,
    rpc,
    speculation,
    throughput,
    tokens,
)

BENCHMARKS = {
    "p1": throughput.p1,
    "p2": throughput.p2,
    "p3": throughput.p3,
    "p4": residency.p4,
    "p5": pull.p5,
    "p7": residency.p7,
    "kv": kernels.kv,
    "repack": kernels.repack,
    "peers": peers.peers,
    "rpc": rpc.rpc,
    "cli": cli.cli,
    "spec": speculation.speculation,
    "relay": relay.relay,
    "fa": flash.flash,
    "idle": idle.idle,
    "tokens": tokens.tokens,
    "hop": hop.hop,
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        started = time.perf_counter()
        result = BENCHMARKS[name]()
        result["bench_wall_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps({name: _round(result)}), flush=True)
    return 0


def _round(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
