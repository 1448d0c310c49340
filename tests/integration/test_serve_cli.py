"""``sale-ray serve`` as a user runs it: its own local Ray and Serve on 127.0.0.1, a request
through it, and a clean stop on SIGTERM (slow: it starts a second Ray)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import pytest

from tests.fakes.upstream import ScriptedUpstream

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "cli-test-key-4e8a1c0b7d2f9e63"


def test_sale_ray_serve_serves_and_stops_cleanly_on_sigterm(tmp_path):
    up = ScriptedUpstream().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(
        f"pool: {{agents: [{{name: a1, backend: openai, model: m1, "
        f"base_url: '{up.base_url}', price_in_per_mtok: 0.1, "
        f"price_out_per_mtok: 0.2}}]}}\n"
    )
    env = {**os.environ, "SALE_RAY_API_KEYS": KEY, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sale_ray.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "sale-ray serve did not come up"
            time.sleep(1)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=30,
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "sale", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.headers["x-sale-winner"] == "a1"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        up.stop()
    assert proc.returncode == 0, out[-2000:]
    assert KEY not in out
