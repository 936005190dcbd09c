"""TLS and mutual TLS against the real server, with certificates made by
openssl for the test: a client and a worker with the client certificate
schedule and run a task; a client without a certificate is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Tuple

import pytest

from switchyard_client import TLS, AsyncClient, SwitchyardError, TaskContext, TaskState, Worker
from switchyard_client.testing import TestServer

from conftest import BIN, SERVER_ENV


def make_certificates(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=py-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ext in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ]:
        (d / f"{name}.ext").write_text(f"basicConstraints=CA:FALSE\n{ext}\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")


@pytest.fixture
async def mtls(tmp_path: Path) -> AsyncIterator[Tuple[TestServer, Path]]:
    make_certificates(tmp_path)
    env = {
        **SERVER_ENV,
        "SWITCHYARD_TLS__CERT_FILE": str(tmp_path / "server.pem"),
        "SWITCHYARD_TLS__KEY_FILE": str(tmp_path / "server.key"),
        "SWITCHYARD_TLS__CLIENT_CA_FILE": str(tmp_path / "ca.pem"),
        "SWITCHYARD_TLS__CLIENT_AUTH": "require",
    }
    tls = TLS(ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "client.pem", key_file=tmp_path / "client.key")
    server = await TestServer.start(BIN, memory=True, env=env, tls=tls)
    try:
        yield server, tmp_path
    finally:
        await server.close()


async def test_a_client_and_a_worker_with_a_certificate_run_a_task(mtls: Tuple[TestServer, Path]) -> None:
    server, d = mtls
    assert server.url.startswith("https://")
    tls = TLS(ca_file=d / "ca.pem", cert_file=d / "client.pem", key_file=d / "client.key")
    worker = Worker(server.url, tls=tls)

    @worker.task("py.tls.add")
    async def add(payload: Dict[str, Any], ctx: TaskContext) -> Dict[str, Any]:
        return {"sum": payload["a"] + payload["b"]}

    await worker.wait_registered()
    try:
        async with AsyncClient(server.url, tls=tls, timeout=10) as client:
            res = await client.schedule("py.tls.add", {"a": 40, "b": 2})
            done = await client.wait(res.task_id, timeout=10)
            assert done.state is TaskState.COMPLETED and done.result == {"sum": 42}
    finally:
        await worker.close()


async def test_a_client_without_a_certificate_is_refused(mtls: Tuple[TestServer, Path]) -> None:
    server, d = mtls
    async with AsyncClient(server.url, tls=TLS(ca_file=d / "ca.pem"), timeout=5) as client:
        with pytest.raises(SwitchyardError):
            await client.metrics()
