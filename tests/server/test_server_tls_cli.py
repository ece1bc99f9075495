"""TLS via uvicorn's certificate options, and the `pbtune server` / `pbtune server-status` commands."""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from server_helpers import KEY
from typer.testing import CliRunner

from pbtune.cli import app
from pbtune.server.client import PBTClient
from pbtune.server.errors import ServerUnavailableError
from pbtune.server.runner import PBTServer


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    crypto = pytest.importorskip("cryptography", reason="cryptography makes the test certificate")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_server_serves_a_client_that_trusts_its_certificate(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    server = start_server(population=2, ssl_certfile=cert, ssl_keyfile=key)
    assert server.url.startswith("https://")
    client = connect(server, str(csv), verify=cert)
    client.report(1, 0.5)
    assert client.step == 1
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="TLS"):
        connect(server, str(csv), retry_seconds=30)  # does not trust the self-signed certificate
    assert time.monotonic() - started < 10  # a certificate failure is not retried


def test_server_status_command_prints_the_live_population(
    start_server: Callable[..., PBTServer], connect: Callable[..., PBTClient], tmp_path: Path
) -> None:
    csv = tmp_path / "space.csv"
    csv.write_text("lr,0.001,0.1,log\n")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    server = start_server(population=2)
    client = connect(server, str(csv))
    client.report(3, 0.75)
    runner = CliRunner()
    table = runner.invoke(app, ["server-status", server.url, "--auth-key-file", str(key_file)])
    assert table.exit_code == 0, table.output
    assert "run pbt (live)" in table.output and "0.75" in table.output and "running" in table.output
    raw = runner.invoke(app, ["server-status", server.url, "--auth-key-file", str(key_file), "--json"])
    view = json.loads(raw.output)
    assert view["members"][client.member_id]["step"] == 3
    same = runner.invoke(app, ["status", "--server", server.url, "--auth-key-file", str(key_file), "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.output)["members"][client.member_id]["step"] == 3
    key_file.write_text("wrong")
    refused = runner.invoke(app, ["server-status", server.url, "--auth-key-file", str(key_file)])
    assert refused.exit_code == 2 and "auth key" in refused.output


@pytest.mark.parametrize(("args", "message"), [
    (["--auth-key-file", "{empty}"], "auth_key_file"),
    (["--auth-key-file", "{missing}"], "auth_key_file"),
    (["--auth-key-file", "{key}", "--mode", "upwards"], "--mode must be max or min"),
    (["--auth-key-file", "{key}", "--population", "1"], "population"),
    (["--auth-key-file", "{key}", "--ssl-certfile", "{key}"], "ssl"),
])
def test_server_command_refuses_bad_options_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").write_text("  \n")
    (tmp_path / "key").write_text(KEY)
    files = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "key": tmp_path / "key"}
    argv = ["server", "--port", "0", "--storage", f"sqlite:///{tmp_path}/s.db"] + [a.format(**files) for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
