"""Record the real client's outcome trace of a scenario, over loopback, in virtual time.

`record(scenario, path)` serves `scenario` with the fake Gemini server on 127.0.0.1 and drives
a `KeyedClient(record=path)` with the simulator's own arrivals (`generate_arrivals` with the
scenario's seed), each submitted at its time with its models, size, deadline and stream flag,
as ``tests/test_cross_validation.py`` does; the server's world and the client's jitter get the
seeds `sim.engine.simulate` gives its own, so a replay of the recording is comparable with the
simulator's run.  Run it on a `virtual_loop.VirtualTimeLoop` (`virtual_loop.run`): the server,
the client and the arrivals then share a virtual clock a busy machine cannot move.

Used by ``tests/test_replay.py`` and ``scripts/record_trace.py`` (which writes the demo trace
``sim/traces/demo.jsonl``).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import virtual_loop
from e2e_support import ScenarioTime, running_server, scenario_client

from keysched import KeyedClient, KeyschedError
from sim.scenario import Scenario
from sim.server import SimApp
from sim.workload import Arrival, generate_arrivals

__all__ = ["record"]

MASK = 0xFFFFFFFF


async def _one(client: KeyedClient, arrival: Arrival) -> None:
    """One arrival as the simulator would send it; a failure is in the trace, not raised."""
    prompt = "x" * (4 * arrival.input_tokens)  # `estimate_tokens` reads it as input_tokens
    try:
        if arrival.stream:
            async for _ in client.stream(prompt, models=arrival.models,
                                         deadline=arrival.deadline):
                pass
        else:
            await client.generate(prompt, models=arrival.models, deadline=arrival.deadline)
    except KeyschedError:
        pass


async def record(scenario: Scenario, path: Path) -> None:
    """Run the real client through `scenario` over loopback, recording its trace to `path`."""
    seed = scenario.seed
    arrivals = generate_arrivals(scenario, random.Random(seed))
    loop = asyncio.get_running_loop()
    assert isinstance(loop, virtual_loop.VirtualTimeLoop)
    async with running_server(scenario, seed=(seed * 7919 + 1) & MASK, time_scale=1.0,
                              clock=loop.time) as (server, _), \
            scenario_client(server, seed=(seed * 104729 + 2) & MASK, record=str(path)) as client:
        assert isinstance(server.app, SimApp)
        time = ScenarioTime(server.app)
        tasks = []
        for arrival in arrivals:
            await time.until(arrival.time)
            tasks.append(asyncio.create_task(_one(client, arrival)))
        await asyncio.gather(*tasks)
