"""Fuzzes the admin HTTP API against its own OpenAPI document (`make
test-openapi`): starts the real server (`$SWITCHYARD_BIN`) on free loopback
ports with an in-memory store, puts tasks and a schedule in it through the
CLI, then runs schemathesis on `GET /openapi.json` with its checks: every
answer must be documented, conform to its schema, content type and
headers, no answer may be a 5xx, and bad input must be refused with a 4xx. The event stream is left
out (it never ends); tests/it/admin.rs covers it.

Bounded: a fixed seed, `SCHEMATHESIS_MAX_EXAMPLES` (default 100) cases per
operation, two workers; about a minute here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("PY_VENV", ROOT / ".venv"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early ({proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the server did not answer /healthz within 30 s")


def start(binary: str) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_LOG__FILTER"] = "warn"
    for attempt in range(3):
        grpc, admin = free_port(), free_port()
        proc = subprocess.Popen(
            [binary, "serve", "--memory", "--listen", f"127.0.0.1:{grpc}", "--admin-listen", f"127.0.0.1:{admin}"],
            env=env,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{admin}", proc)
            return proc, f"http://127.0.0.1:{grpc}", f"http://127.0.0.1:{admin}"
        except Exception:
            proc.kill()
            proc.wait()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def cli(binary: str, server: str, *args: str) -> dict:
    out = subprocess.run([binary, "--json", "--server", server, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def seed(binary: str, server: str) -> None:
    """Tasks in several states, with owners, logs and a schedule."""
    ids = []
    for i in range(6):
        made = cli(binary, server, "task", "schedule", f"fuzz-{i % 3}", "--payload", f'{{"i": {i}}}',
                   "--user", f"user-{i % 2}", "--session", "s-1", "--priority", str(i))
        ids.append(made["taskId"])
    cli(binary, server, "task", "cancel", ids[0], "--reason", "fuzzing")
    cli(binary, server, "task", "schedule", "fuzz-later", "--delay", "1h")
    cli(binary, server, "schedule", "create", "fuzz-hourly", "fuzz-0", "--cron", "0 * * * *")


def main() -> int:
    binary = os.environ.get("SWITCHYARD_BIN") or str(ROOT / "target" / "debug" / "switchyard")
    proc, grpc, admin = start(binary)
    try:
        seed(binary, grpc)
        cmd = [
            str(VENV / "bin" / "schemathesis"), "run", f"{admin}/openapi.json",
            # Every check but two: positive_data_acceptance (a user id's
            # bound is in bytes, JSON Schema counts characters, so 256
            # non-ASCII characters are schema-valid and refused) and
            # ignored_auth (this server runs without tokens; tests/it/admin.rs
            # covers them).
            "--checks", "all",
            "--exclude-checks", "positive_data_acceptance,ignored_auth",
            "--exclude-path-regex", "/events$",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100"),
            "--seed", os.environ.get("SCHEMATHESIS_SEED", "19"),
            "--workers", "2",
            "--request-timeout", "10",
            "--generation-database", "none",
            "--no-color",
        ]
        print("+", " ".join(cmd), flush=True)
        return subprocess.run(cmd).returncode
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
