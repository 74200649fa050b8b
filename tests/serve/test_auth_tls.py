"""API keys and tenants, the key-file reload, probes without tokens, TLS and mutual TLS with
certificates made here, and loopback-only binding without a key file."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.serve_server import ServerThread
from medrt.serve.auth import add_key, hash_key, parse_key_file
from medrt.v1 import medrt_pb2, medrt_pb2_grpc

REQ = medrt_pb2.GenerateRequest(prompt="hi", sampling=medrt_pb2.SamplingParams(max_tokens=2))


def _bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def test_key_file_format(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    key = add_key("icu", path, max_concurrency=3)
    text = path.read_text()
    assert key not in text and f"sha256:{hash_key(key)} icu max_concurrency=3" in text
    tenants = parse_key_file(path)
    assert tenants[hash_key(key)].name == "icu"
    assert tenants[hash_key(key)].max_concurrency == 3
    path.write_text("sha256:abc icu\n")
    with pytest.raises(ValueError, match=r"keys:1: the hash must be 64 hex digits"):
        parse_key_file(path)


def test_cli_keys_add_prints_the_key_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medrt.cli import main

    path = tmp_path / "k.txt"
    assert main(["keys", "add", "radiology", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("mrt-") and parse_key_file(path)[hash_key(key)].name == "radiology"


@pytest.fixture(scope="module")
def keyed(start_server: Callable[..., ServerThread],
          tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerThread, Path, str, str]:
    path = tmp_path_factory.mktemp("keys") / "api-keys.txt"
    ward = add_key("ward7", path)
    lab = add_key("lab", path)
    # the lab key may only use another model
    path.write_text(path.read_text().replace(" lab\n", " lab models=other-model\n"))
    st = start_server(api_keys=str(path), host="0.0.0.0")
    return st, path, ward, lab


def test_grpc_auth(keyed: tuple[ServerThread, Path, str, str]) -> None:
    st, _, ward, lab = keyed
    with grpc.insecure_channel(st.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        for metadata in ((), _bearer("mrt-wrong"), (("authorization", "Basic abc"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(REQ, metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(REQ, metadata=_bearer(lab), timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert stub.Generate(REQ, metadata=_bearer(ward), timeout=30).token_ids
        # probes carry no token
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_http_auth_and_tenant_metrics(keyed: tuple[ServerThread, Path, str, str]) -> None:
    st, _, ward, _ = keyed
    bad = openai.OpenAI(base_url=st.http_base + "/v1", api_key="mrt-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=st.http_base + "/v1", api_key=ward, max_retries=0)
    resp = good.completions.create(model="tiny-llama", prompt="hi", max_tokens=3)
    with urllib.request.urlopen(st.http_base + "/health", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(st.http_base + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    by_tenant = {s.labels["tenant"]: s.value for f in text_string_to_metric_families(metrics)
                 for s in f.samples if s.name == "medrt:generation_tokens_total"}
    assert set(by_tenant) == {"ward7"}  # nothing ran for the lab tenant
    assert by_tenant["ward7"] >= resp.usage.completion_tokens > 0


def test_key_reload(keyed: tuple[ServerThread, Path, str, str]) -> None:
    st, path, _, _ = keyed
    new = add_key("pharmacy", path)
    with grpc.insecure_channel(st.grpc_target) as ch:
        stub = medrt_pb2_grpc.MedrtStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(REQ, metadata=_bearer(new), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        st.server.reload_keys()  # what SIGHUP runs
        assert stub.Generate(REQ, metadata=_bearer(new), timeout=30).token_ids
        path.write_text("not a key file\n")
        st.server.reload_keys()  # a broken file keeps the keys in use
        assert stub.Generate(REQ, metadata=_bearer(new), timeout=30).token_ids


def test_with_keys_binds_the_host_given(keyed: tuple[ServerThread, Path, str, str]) -> None:
    assert keyed[0].server.host == "0.0.0.0"


def test_without_keys_binds_loopback_only(start_server: Callable[..., ServerThread],
                                          caplog: pytest.LogCaptureFixture) -> None:
    st = start_server(host="0.0.0.0", http_port=None)
    assert st.server.host == "127.0.0.1"
    assert "binding to 127.0.0.1" in caplog.text
    st.stop()


def test_metrics_auth(start_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    key = add_key("ops", tmp_path / "keys")
    st = start_server(api_keys=str(tmp_path / "keys"), metrics_auth=True)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(st.http_base + "/metrics", timeout=10)
    assert info.value.code == 401
    assert json.loads(info.value.read())["error"]["type"] == "authentication_error"
    req = urllib.request.Request(st.http_base + "/metrics",
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert b"medrt:kv_cache_usage_perc" in r.read()
    st.stop()


# -- TLS -------------------------------------------------------------------------------------

def _cert(tmp: Path, name: str, issuer: tuple | None, server: bool) -> tuple[Path, Path, tuple]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = (subject, key) if issuer is None else (issuer[0], issuer[1])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
    cert = b.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (subject, key)


def test_mutual_tls(start_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    ca_crt, _, ca = _cert(tmp_path, "test-ca", None, False)
    srv_crt, srv_key, _ = _cert(tmp_path, "server", ca, True)
    cli_crt, cli_key, _ = _cert(tmp_path, "client", ca, False)
    st = start_server(tls_cert=str(srv_crt), tls_key=str(srv_key), tls_client_ca=str(ca_crt))
    target = f"localhost:{st.server.grpc_port}"
    creds = grpc.ssl_channel_credentials(ca_crt.read_bytes(), cli_key.read_bytes(),
                                         cli_crt.read_bytes())
    with grpc.secure_channel(target, creds) as ch:
        assert medrt_pb2_grpc.MedrtStub(ch).Generate(REQ, timeout=30).token_ids
    # without a client certificate the handshake fails
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca_crt.read_bytes())) as ch:
        with pytest.raises(grpc.RpcError) as info:
            medrt_pb2_grpc.MedrtStub(ch).Generate(REQ, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # HTTPS with the client certificate
    ctx = ssl.create_default_context(cafile=str(ca_crt))
    ctx.load_cert_chain(str(cli_crt), str(cli_key))
    url = f"https://localhost:{st.server.http_port}/health"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    plain = ssl.create_default_context(cafile=str(ca_crt))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, context=plain, timeout=10).read()
    st.stop()


def test_server_tls(start_server: Callable[..., ServerThread], tmp_path: Path) -> None:
    ca_crt, _, ca = _cert(tmp_path, "test-ca", None, False)
    srv_crt, srv_key, _ = _cert(tmp_path, "server", ca, True)
    st = start_server(tls_cert=str(srv_crt), tls_key=str(srv_key))
    creds = grpc.ssl_channel_credentials(ca_crt.read_bytes())
    with grpc.secure_channel(f"localhost:{st.server.grpc_port}", creds) as ch:
        assert medrt_pb2_grpc.MedrtStub(ch).Generate(REQ, timeout=30).token_ids
    # a plaintext client cannot talk to the TLS port
    with grpc.insecure_channel(st.grpc_target) as ch, pytest.raises(grpc.RpcError):
        medrt_pb2_grpc.MedrtStub(ch).Generate(REQ, timeout=5)
    st.stop()
