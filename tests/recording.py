"""The real client driven through a scenario's arrivals over loopback, in virtual time.

`drive(scenario)` serves `scenario` with the fake Gemini server on 127.0.0.1 and drives a
`KeyedClient` with the simulator's own arrivals (`generate_arrivals` with the scenario's seed),
each submitted at its time with its models, size, deadline and stream flag.  The server's
world and the client's jitter get the seeds `sim.engine.simulate` gives its own, so the run is
comparable with the simulator's.  Run it on a `virtual_loop.VirtualTimeLoop`
(`virtual_loop.run`): the server, the client and the arrivals then share a virtual clock that a
busy machine cannot move.  `record(scenario, path)` is the same run with
``KeyedClient(record=path)``: the outcome trace a real pool with that traffic would write.

Used by ``tests/test_cross_validation.py``, ``tests/test_replay.py`` and
``scripts/record_trace.py`` (which writes the built-in trace ``sim/traces/demo.jsonl``).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import virtual_loop
from e2e_support import ScenarioTime, running_server, scenario_client, server_counters

from keysched import KeyedClient, KeyschedError
from sim.scenario import Scenario
from sim.server import SimApp
from sim.workload import Arrival, generate_arrivals

__all__ = ["drive", "record"]

MASK = 0xFFFFFFFF

Counters = dict[str, dict[str, dict[str, int]]]


async def _one(client: KeyedClient, arrival: Arrival) -> str:
    """Run one arrival as the simulator would; the model that served it, or the error's name."""
    prompt = "x" * (4 * arrival.input_tokens)  # `estimate_tokens` reads it as input_tokens
    try:
        if arrival.stream:
            models = {chunk.model async for chunk in client.stream(
                prompt, models=arrival.models, deadline=arrival.deadline)}
            assert len(models) == 1
            return models.pop()
        result = await client.generate(prompt, models=arrival.models, deadline=arrival.deadline)
        return result.model
    except KeyschedError as error:
        return type(error).__name__


async def drive(scenario: Scenario, **client_kwargs: Any) -> tuple[list[str], Counters]:
    """Run `scenario`'s arrivals through a real client over loopback.

    Args:
        scenario: the scenario (served and driven).
        client_kwargs: more `KeyedClient` arguments (``record=...``).

    Returns:
        What each arrival ended with (the model that answered, or the error's class name), in
        arrival order, and the server's counters (read over HTTP; checked equal to its world's).
    """
    seed = scenario.seed
    arrivals = generate_arrivals(scenario, random.Random(seed))
    loop = asyncio.get_running_loop()
    assert isinstance(loop, virtual_loop.VirtualTimeLoop)
    # The seeds `simulate` gives its world and its core.
    async with running_server(scenario, seed=(seed * 7919 + 1) & MASK, time_scale=1.0,
                              clock=loop.time) as (server, world), \
            scenario_client(server, seed=(seed * 104729 + 2) & MASK, **client_kwargs) as client:
        assert isinstance(server.app, SimApp)
        time = ScenarioTime(server.app)
        tasks = []
        for arrival in arrivals:
            await time.until(arrival.time)
            tasks.append(asyncio.create_task(_one(client, arrival)))
        ends = await asyncio.gather(*tasks)
        counters = await server_counters(server)
        assert counters == world.counters()
    return list(ends), counters


async def record(scenario: Scenario, path: Path) -> None:
    """`drive` with ``KeyedClient(record=path)``: the client's outcome trace goes to `path`."""
    await drive(scenario, record=str(path))
