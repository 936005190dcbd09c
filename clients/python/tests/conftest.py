"""Fixtures: the real server (`$SWITCHYARD_BIN`, default
`<repo>/target/debug/switchyard`) on an ephemeral port, a TCP proxy that can
cut connections, and `until()`: wait on a condition with a deadline."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator, List, Optional, Set, Union

import pytest

from switchyard_client import AsyncClient
from switchyard_client.testing import TestServer

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("SWITCHYARD_BIN") or str(REPO / "target" / "debug" / "switchyard")

# Short leases and heartbeats so lost workers show up quickly.
SERVER_ENV = {
    "SWITCHYARD_SCHEDULER__LEASE_TTL": "3s",
    "SWITCHYARD_SCHEDULER__HEARTBEAT_INTERVAL": "500ms",
}


def pytest_configure(config: pytest.Config) -> None:
    if not Path(BIN).is_file():
        raise pytest.UsageError(f"{BIN} does not exist: run `cargo build --bin switchyard` (make test-python does) or set SWITCHYARD_BIN")


async def start_server(memory: bool = True, **env: str) -> TestServer:
    return await TestServer.start(BIN, memory=memory, env={**SERVER_ENV, **env})


@pytest.fixture(scope="session")
def server() -> Iterator[TestServer]:
    """One in-memory server for the tests that do not restart it."""
    srv = asyncio.run(start_server())
    try:
        yield srv
    finally:
        asyncio.run(srv.close())


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.address, timeout=10) as c:
        yield c


@pytest.fixture
def name() -> str:
    """A task name of this test's own, so tests sharing the server do not see
    each other's tasks."""
    return f"py.{uuid.uuid4().hex[:10]}"


async def until(cond: Callable[[], Union[bool, Awaitable[bool]]], what: str, timeout: float = 10.0) -> None:
    """Returns when `cond()` holds, polling every 10 ms; fails after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class Proxy:
    """A TCP proxy on a free loopback port in front of `target`. `cut()`
    closes every connection; while `refusing`, new connections are closed at
    once; while `stalling`, new connections are accepted and never answered."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refusing = False
        self.stalling = False
        self.connections = 0
        self._server: Optional[asyncio.base_events.Server] = None
        self._writers: Set[asyncio.StreamWriter] = set()
        self._tasks: List["asyncio.Task[None]"] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> "Proxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        if self.stalling:
            # Speak just enough HTTP/2 (an empty SETTINGS frame and the ACK of
            # the client's) for the connection to be up, then never answer.
            self._writers.add(writer)
            writer.write(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            try:
                while await reader.read(65536):
                    pass
            except (OSError, asyncio.CancelledError):
                pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()
                self._writers.discard(w)

        self._tasks += [asyncio.ensure_future(pipe(reader, up_writer)), asyncio.ensure_future(pipe(up_reader, writer))]

    def cut(self) -> None:
        for w in list(self._writers):
            transport = w.transport
            transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in self._tasks:
            t.cancel()
