"""The ``python -m sim`` command line, as argparse subcommands.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets
``handler`` to a function taking the parsed namespace and returning an exit code; adding
``list``/``run``/``compare`` means adding such a function to `_COMMANDS`.

``serve`` prints the base URL and the scenario's keys as ``label=secret``: the secrets are the
scenario's fake ones, and a client pointed at the server needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from sim.scenario import ScenarioError, builtin_scenarios, load_scenario

__all__ = ["DEFAULT_PLOT_DIR", "build_parser", "main"]

DEFAULT_PLOT_DIR = "sim-plots"

Handler = Callable[[argparse.Namespace], int]


def _serve(args: argparse.Namespace) -> int:
    # Imported here: only `serve` needs the server modules.
    from sim.server import make_app
    from sim.server import serve as make_server
    from sim.world import World

    scenario = load_scenario(args.scenario)
    world = World(scenario, seed=args.seed)
    app = make_app(world, time_scale=args.time_scale)
    server = make_server(app, args.host, args.port)

    async def run() -> None:
        await server.start()
        print(f"serving scenario {scenario.name!r} on {server.base_url} "
              f"(time scale {app.time_scale:g}); Ctrl-C stops", flush=True)
        for key in scenario.keys:
            print(f"  key {key.label}={key.secret} (project {key.project})", flush=True)
        await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the fake Gemini server for a scenario on 127.0.0.1",
        description="Serve the Gemini wire format (/v1beta/...) backed by a scenario's world "
                    "model; counters at GET /_sim/counters.")
    parser.add_argument("scenario", help=f"a TOML file or a built-in name "
                                         f"({', '.join(builtin_scenarios())})")
    parser.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; keep it on loopback)")
    parser.add_argument("--time-scale", type=float, default=None,
                        help="virtual seconds per real second (default: the scenario's)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the world's seed (default: the scenario's)")
    parser.set_defaults(handler=_serve)


def _add_simulation(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Imported here so that `serve` alone does not load the engine and metrics.
    from sim.commands import add_commands

    add_commands(subparsers)


def _add_processes(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sim.processes import add_command

    add_command(subparsers)
def _add_replay(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # `fit` and `replay`: rebuild a scenario from an outcome trace (sim.replay).
    from sim.replay import add_commands

    add_commands(subparsers)


_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_simulation,
    _add_serve,
    _add_processes,
    _add_replay,
]


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="python -m sim",
                                     description="keysched's simulator and fake Gemini server.")
    parser.add_argument("--plot", choices=("summary", "all", "none"), default="summary",
                        help="with no command: which figures the comparison draws (default: "
                             "summary, a few; all: every figure, a minute or more)")
    parser.add_argument("--plot-dir", metavar="DIR", default=DEFAULT_PLOT_DIR,
                        help=f"with no command: where the figures go (default: "
                             f"{DEFAULT_PLOT_DIR}/)")
    parser.add_argument("--trace", metavar="FILE", default=None,
                        help="with no command: write every run's attempts as JSON lines, one "
                             "file per run (FILE's name with -SCENARIO-POLICY added)")
    parser.add_argument("--jobs", metavar="N", type=_positive, default=None,
                        help="with no command: simulate in N worker processes (default: one "
                             "per CPU; 1: in this process)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


EXIT_BROKEN_PIPE = 141
"""The exit code after the reader of our output went away (``| head``): 128 + SIGPIPE, as a
command killed by the signal reports it."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command is None:
            from sim.commands import main_default

            return main_default(args.plot, args.plot_dir, args.trace, args.jobs)
        handler: Handler = args.handler
        return handler(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `python -m sim list | head`: the reader has what it wanted.  End quietly; stdout is
        # pointed at /dev/null so the interpreter's final flush does not fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
