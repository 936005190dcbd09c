"""Starts a real Switchyard server for tests and benchmarks.

```python
async with TestServer.start() as server:       # $SWITCHYARD_BIN, or `switchyard` on PATH
    async with AsyncClient(server.address) as client:
        ...
```

The server listens on a free loopback port (its admin API on port 0), with
its store in a fresh temporary directory (or in memory), and `start()`
returns once its health check says SERVING (with `wait_serving=False`, once
it answers at all: a replica of a cluster that stands by answers
NOT_SERVING). `restart()` stops it (SIGTERM) and starts it again on the same
port and store; `stop(signal.SIGKILL)` kills it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from types import TracebackType
from typing import Dict, List, Mapping, Optional, Type

from .connection import TLS, Connection

__all__ = ["TestServer", "free_port", "server_binary"]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    """$SWITCHYARD_BIN, else `switchyard` on PATH."""
    env = os.environ.get("SWITCHYARD_BIN")
    if env:
        return env
    found = shutil.which("switchyard")
    if found:
        return found
    raise FileNotFoundError("set SWITCHYARD_BIN to the switchyard server binary")


class TestServer:
    """A `switchyard serve` child process on a free port."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        binary: str,
        *,
        memory: bool = False,
        env: Optional[Mapping[str, str]] = None,
        log_filter: str = "warn",
        wait_serving: bool = True,
        tls: Optional[TLS] = None,
    ) -> None:
        self.binary = binary
        self.tls = tls
        self.memory = memory
        self.wait_serving = wait_serving
        self.extra_env: Dict[str, str] = dict(env or {})
        self.log_filter = os.environ.get("SWITCHYARD_TEST_LOG", log_filter)
        self.data_dir = None if memory else tempfile.mkdtemp(prefix="switchyard-py-")
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._log: List[str] = []
        self._reader: Optional[threading.Thread] = None

    @property
    def address(self) -> str:
        """`127.0.0.1:<port>`."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (`https://` with `tls`)."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @classmethod
    async def start(
        cls,
        binary: Optional[str] = None,
        *,
        memory: bool = False,
        env: Optional[Mapping[str, str]] = None,
        log_filter: str = "warn",
        wait_serving: bool = True,
        tls: Optional[TLS] = None,
    ) -> "TestServer":
        """Starts a server; returns once its health check says SERVING, or
        with `wait_serving=False` once it answers at all (a standby replica
        of a cluster on PostgreSQL, `env` naming the store, answers
        NOT_SERVING). A server that speaks TLS (`env` sets
        `SWITCHYARD_TLS__*`) is asked over TLS with `tls`'s files."""
        server = cls(binary or server_binary(), memory=memory, env=env, log_filter=log_filter, wait_serving=wait_serving, tls=tls)
        for attempt in range(1, 4):
            # A freshly freed port can be taken before the server binds it: retry.
            server.port = free_port()
            try:
                await server._launch()
                return server
            except Exception:
                server._kill()
                if attempt == 3:
                    server._cleanup()
                    raise
        raise AssertionError("unreachable")

    async def _launch(self, timeout: float = 30.0) -> None:
        args = [self.binary, "serve", "--listen", self.address, "--admin-listen", "127.0.0.1:0"]
        args += ["--memory"] if self.memory else ["--data-dir", str(self.data_dir)]
        # The server refuses SWITCHYARD_* variables that are not settings
        # (SWITCHYARD_BIN, SWITCHYARD_TEST_LOG, ...): pass on only
        # SWITCHYARD_<SECTION>__<KEY> and the top-level settings.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SWITCHYARD_") or "__" in k or k in ("SWITCHYARD_LISTEN", "SWITCHYARD_DATA_DIR", "SWITCHYARD_CONFIG")
        }
        env.update(
            {
                "SWITCHYARD_LOG__FILTER": self.log_filter,
                "SWITCHYARD_LOG__FORMAT": "json",
                "SWITCHYARD_SCHEDULER__SHUTDOWN_GRACE": "2s",
            }
        )
        env.update(self.extra_env)
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc = self.proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()
        conn = Connection(self.address, tls=self.tls)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited early ({proc.returncode}):\n{self.output()}")
                try:
                    if await conn.health(timeout=0.5) == "SERVING" or not self.wait_serving:
                        return
                except Exception:  # noqa: BLE001
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"the server did not say SERVING within {timeout} s:\n{self.output()}")
                await asyncio.sleep(0.02)
        finally:
            await conn.close()

    def _read(self, proc: "subprocess.Popen[bytes]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._log.append(line.decode("utf-8", "replace"))
            if len(self._log) > 5000:
                del self._log[:1000]

    def output(self) -> str:
        """What the server printed (the last lines)."""
        return "".join(self._log[-200:])

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stops the server (`sig`, then SIGKILL after `timeout`)."""
        proc = self.proc
        self.proc = None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, proc.wait), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await loop.run_in_executor(None, proc.wait)

    async def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stops the server and starts it again on the same port and store."""
        await self.stop(sig)
        await self._launch()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _cleanup(self) -> None:
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def close(self) -> None:
        """Stops the server and removes its store."""
        await self.stop()
        self._cleanup()

    async def __aenter__(self) -> "TestServer":
        return self

    async def __aexit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        await self.close()
