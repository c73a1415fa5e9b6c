"""TLS and mutual TLS on the gRPC port (certificates made by openssl for the test)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from serving.probe import check
from tests.conftest import ServerProcess, missing, native_built


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _cert(folder: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    subj = "/CN=localhost"
    if ca is None:
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subj,
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        )
    else:
        csr = folder / f"{name}.csr"
        ext = folder / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subj,
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(ca[1]),
            "-CAkey",
            str(ca[0]),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        )
    return key, crt


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        missing("openssl", "install Debian's openssl (`make tools` does)")
    folder = tmp_path_factory.mktemp("pki")
    ca = _cert(folder, "ca")
    return {"ca": ca, "server": _cert(folder, "server", ca), "client": _cert(folder, "client", ca)}


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_tls(pki: dict, empty_repository: Path, frontend: str) -> None:
    if frontend == "native":
        native_built()
    key, crt = pki["server"]
    server = ServerProcess(
        empty_repository, "--tls-cert", str(crt), "--tls-key", str(key), "--frontend", frontend
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki["ca"][1].read_bytes())
        deadline = time.monotonic() + 30
        while check(server.target, timeout=0.5, credentials=creds)[0] != 0:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        assert check(server.target, timeout=2)[0] == 2  # plaintext is refused
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize("frontend", ["python", "native"])
def test_mutual_tls_requires_a_client_certificate(
    pki: dict, empty_repository: Path, frontend: str
) -> None:
    if frontend == "native":
        native_built()
    key, crt = pki["server"]
    server = ServerProcess(
        empty_repository,
        "--tls-cert",
        str(crt),
        "--tls-key",
        str(key),
        "--tls-client-ca",
        str(pki["ca"][1]),
        "--frontend",
        frontend,
    )
    try:
        ca = pki["ca"][1].read_bytes()
        ckey, ccrt = pki["client"]
        good = grpc.ssl_channel_credentials(ca, ckey.read_bytes(), ccrt.read_bytes())
        deadline = time.monotonic() + 30
        while check(server.target, timeout=0.5, credentials=good)[0] != 0:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        anonymous = grpc.ssl_channel_credentials(ca)
        assert check(server.target, timeout=2, credentials=anonymous)[0] == 2
    finally:
        assert server.terminate() == 0
