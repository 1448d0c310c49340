"""``sale-ray serve-llm`` as a user runs it: its own local Ray and Serve on 127.0.0.1, one route
attached to a scripted upstream (no model: the CLI is what is tested), a request through it,
and a clean stop on SIGTERM (slow: it starts a second Ray)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import pytest

from tests.fakes.upstream import ScriptedUpstream

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sale_ray_serve_llm_serves_its_routes_and_stops_cleanly_on_sigterm(tmp_path):
    up = ScriptedUpstream().start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "serve_llm.yaml"
    cfg.write_text(
        "applications:\n"
        "  - name: llm-m1\n"
        "    route_prefix: /llm/m1\n"
        "    import_path: sale_ray.serve.llm_pool:app_builder\n"
        f"    args: {{name: m1, attach_url: '{up.base_url}'}}\n"
        "  - name: llm-m2\n"
        "    route_prefix: /llm/m2\n"
        "    import_path: sale_ray.serve.llm_pool:app_builder\n"
        f"    args: {{name: m2, attach_url: '{up.base_url}'}}\n"
    )
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "sale_ray.cli", "serve-llm", "--config", str(cfg)]
    proc = subprocess.Popen(
        [*cmd, "--only", "m1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/llm/m1/v1"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        # the CLI says it serves once every route is deployed (a route may answer a moment
        # before Serve reports its app running)
        while not any("sale-ray: serving" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "sale-ray serve-llm did not come up"
            time.sleep(0.5)
        assert any(f"m1: http://127.0.0.1:{port}/llm/m1/v1" in line for line in lines)
        r = httpx.post(
            base + "/chat/completions",
            timeout=30,
            json={"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == (
            "echo(m1): hi"
        )
        assert r.json()["usage"]["completion_tokens"] > 0
        # --only m1: the other route was never deployed
        assert httpx.get(f"http://127.0.0.1:{port}/llm/m2/v1/models", timeout=5).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(10)
        up.stop()
    assert proc.returncode == 0, "".join(lines)[-2000:]
