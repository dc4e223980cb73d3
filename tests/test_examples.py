"""`python examples.py` runs against the embedded fake server when no API key is configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_examples_run_against_the_fake_server_without_keys() -> None:
    """With no GEMINI_API_KEYS it exits 0, and its output shows a disabled key and a fallback."""
    env = {name: value for name, value in os.environ.items()
           if name not in ("GEMINI_API_KEYS", "GEMINI_MODELS")}
    done = subprocess.run([sys.executable, str(ROOT / "examples.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "Fake Gemini server" in out
    assert "Real API" not in out
    # The revoked key: logged when it is disabled, and shown disabled in the pool table.
    assert "[log] keysched: key disabled key=beta-2" in out
    assert any(line.split()[:1] == ["beta-2"] and "disabled" in line.split()
               for line in out.splitlines())
    # A request fell back from the best model, and the log says so.
    assert "[log] keysched: fallback model=gemini-2.5-flash" in out
    assert "on gemini-2.5-flash after" in out
    assert "Traceback" not in out
