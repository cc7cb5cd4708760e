"""A hostile client for the open-endpoint tests, run in its own process (real connections).

``python -m tests.flood ADDRESS [--watches N] [--connections N] [--reflectors N]`` opens N
``grpc.health.v1.Health/Watch`` streams without credentials, spread over N connections, and keeps
every one that is answered open; meanwhile each reflector opens ``ServerReflectionInfo`` streams
without credentials over and over, holding open every one that is answered. Once every Watch has
had its first answer it prints one JSON line (``{"watch": {outcome: count}, ...}``), keeps
everything open until its standard input closes (or ``--max-seconds`` pass, so nothing is ever
left running), then prints a last JSON line with the reflection outcomes and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


async def first_answer(call: grpc.aio.UnaryStreamCall) -> str:
    try:
        reply = await call.read()
    except grpc.RpcError as exc:
        return exc.code().name
    if reply is grpc.aio.EOF:
        return "ended"
    return "held" if reply.status == SERVING else f"status {reply.status}"


async def reflect(channel: grpc.aio.Channel, stop: asyncio.Event, tally: Counter[str]) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one_request_then_nothing() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        await stop.wait()  # never half-closed: an answered stream stays open

    held = []
    while not stop.is_set():
        call = stub.ServerReflectionInfo(one_request_then_nothing())
        try:
            await call.read()
        except grpc.RpcError as exc:
            # INTERNAL ("Internal error from Core") is the aio client's own report when its
            # write loses the race with a refusal; the server sent its status all the same.
            tally[exc.code().name] += 1
            await asyncio.sleep(0.002)
            continue
        tally["held"] += 1
        held.append(call)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stdin = sys.stdin.fileno()

    def on_stdin() -> None:
        with contextlib.suppress(OSError):
            if os.read(stdin, 4096):
                return
        loop.remove_reader(stdin)
        stop.set()

    loop.add_reader(stdin, on_stdin)
    loop.call_later(args.max_seconds, stop.set)
    # A subchannel pool per channel: each channel is a connection of its own.
    channels = [
        grpc.aio.insecure_channel(args.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(args.connections)
    ]
    tally: Counter[str] = Counter()
    reflectors = [
        asyncio.create_task(reflect(channels[i % len(channels)], stop, tally))
        for i in range(args.reflectors)
    ]
    watches = [
        health_pb2_grpc.HealthStub(channels[i % len(channels)]).Watch(
            health_pb2.HealthCheckRequest(service="")
        )
        for i in range(args.watches)
    ]
    outcomes = await asyncio.wait_for(asyncio.gather(*map(first_answer, watches)), 60)
    await asyncio.sleep(0.5)  # the reflection flood is well under way
    print(json.dumps({"watch": Counter(outcomes), "reflection": tally}), flush=True)
    await stop.wait()
    print(json.dumps({"reflection": tally}), flush=True)
    for task in reflectors:
        task.cancel()
    await asyncio.gather(*reflectors, return_exceptions=True)
    for call in watches:
        call.cancel()
    await asyncio.gather(*(channel.close(grace=None) for channel in channels))


if __name__ == "__main__":
    # An attacker's client does not run on the server's CPU; here it shares the test machine, so
    # it yields the CPU to the server (and to the test) whenever they want it.
    os.nice(10)
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("--watches", type=int, default=1100)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--reflectors", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=90.0)
    asyncio.run(main(parser.parse_args()))
