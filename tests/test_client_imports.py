"""``import keysched`` with its client loaded leaves asyncio unloaded (the import-time target).

benchmarks/bench_client.py holds ``import keysched; keysched.KeyedClient`` to at most 30 ms
over ``import httpx``, which does not load asyncio either; asyncio alone costs about half of
that.  So the client's modules import asyncio where they first use it (see keysched._session):
this test fails if one of them imports it at the top again.
"""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_client_does_not_import_asyncio() -> None:
    """A fresh interpreter that loads `KeyedClient` has not imported asyncio."""
    code = ("import sys, keysched; keysched.KeyedClient; import httpx; "
            "print(sorted(m for m in ('asyncio', 'keysched._client', 'keysched._session', "
            "'keysched._streaming') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    assert out.split() == ["['keysched._client',", "'keysched._session',",
                           "'keysched._streaming']"]
