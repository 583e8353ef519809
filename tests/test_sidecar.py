"""The sidecar HTTP server of the real process: credentials, TLS, loopback default, hostile and slow clients."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from kong_ai_metrics.kong_emulator import KongWorker
from kong_ai_metrics.replay import _free_port
from kong_ai_metrics.sidecar import MAX_CONNECTIONS

from .plugin_process import SERVER_ENV, Spawned, server_env, spawned_server, wait_until
from .test_protocol import PRICED, chat_exchange


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def sample_total(exposition: bytes, name: str, **labels: str) -> float:
    """Sum the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(exposition.decode("utf-8")):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def drive_exchange(spawned: Spawned, info: dict[str, Any], count: int = 1) -> None:
    worker = KongWorker(spawned.socket_path, info, PRICED, read_timeout=10)
    for _ in range(count):
        outcome = worker.exchange(*chat_exchange())
        assert outcome.log.status == "ok", outcome.log.error
    worker.close()


# ---------------------------------------------------------------------------------
# Where it listens


def test_sidecar_default_listen_is_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVER_ENV:
        monkeypatch.delenv(name, raising=False)
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "kong_ai_metrics", "-p", str(prefix), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=server_env(),
    )
    try:
        assert wait_until(lambda: _listening_addresses(process.pid) != [], timeout=15)
        # 127.0.0.1:9542 in /proc/net/tcp notation: address bytes reversed, port in hex.
        assert _listening_addresses(process.pid) == ["0100007F:2546"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _listening_addresses(pid: int) -> list[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    addresses = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}", encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                # State 0A is LISTEN.
                if fields[3] == "0A" and fields[9] in inodes:
                    addresses.append(fields[1])
    return addresses


def test_sidecar_public_listen_without_auth_warns(tmp_path: Path) -> None:
    with spawned_server(tmp_path, [], listen=f"0.0.0.0:{_free_port()}") as spawned:
        assert "needs no credentials" in spawned.stderr()


# ---------------------------------------------------------------------------------
# Credentials


def test_sidecar_auth_basic_from_environment(tmp_path: Path, plugin_info: dict[str, Any]) -> None:
    with spawned_server(tmp_path, [], env={"KONG_AI_METRICS_BASIC_AUTH": "prometheus:s3cret:with-colon"}) as spawned:
        drive_exchange(spawned, plugin_info)

        status, headers, body = spawned.get("/metrics")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith('Basic realm="kong-ai-metrics"')
        assert b"kong_ai_llm_requests_total" not in body

        assert spawned.get("/metrics", basic("prometheus", "wrong"))[0] == 401
        assert spawned.get("/metrics", {"Authorization": "Basic not-base64!"})[0] == 401
        assert spawned.get("/metrics", {"Authorization": "Bearer s3cret:with-colon"})[0] == 401

        status, _, body = spawned.get("/metrics", basic("prometheus", "s3cret:with-colon"))
        assert status == 200
        assert sample_total(body, "kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 1
        # Liveness probes need no credentials.
        assert spawned.get("/healthz")[0] == 200
    assert "s3cret" not in spawned.stderr()


def test_sidecar_auth_bearer_token_flag(tmp_path: Path, plugin_info: dict[str, Any]) -> None:
    with spawned_server(tmp_path, ["--metrics-bearer-token", "tok-123"]) as spawned:
        drive_exchange(spawned, plugin_info)
        status, headers, _ = spawned.get("/metrics")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="kong-ai-metrics"'
        assert spawned.get("/metrics", {"Authorization": "Bearer tok-124"})[0] == 401
        assert spawned.get("/metrics", {"Authorization": "Bearer "})[0] == 401
        status, _, body = spawned.get("/metrics", {"Authorization": "Bearer tok-123"})
        assert status == 200
        assert sample_total(body, "kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 1


def test_sidecar_auth_bearer_token_from_file(tmp_path: Path, plugin_info: dict[str, Any]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-tok\n", encoding="utf-8")
    with spawned_server(tmp_path, [], env={"KONG_AI_METRICS_BEARER_TOKEN_FILE": str(token_file)}) as spawned:
        drive_exchange(spawned, plugin_info)
        assert spawned.get("/metrics")[0] == 401
        assert spawned.get("/metrics", {"Authorization": "Bearer file-to"})[0] == 401
        status, _, body = spawned.get("/metrics", {"Authorization": "Bearer file-tok"})
        assert status == 200
        assert sample_total(body, "kong_ai_llm_requests_total") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics-bearer-token", "a", "--metrics-bearer-token-file", "/dev/null"], "not both"),
        (["--metrics-basic-auth-file", "/nonexistent/credentials"], "cannot read --metrics-basic-auth-file"),
        (["--metrics-bearer-token-file", "/dev/null"], "is empty"),
    ],
    ids=["both", "missing-file", "empty-file"],
)
def test_sidecar_auth_secret_file_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kong_ai_metrics", "-p", str(tmp_path), *args], capture_output=True, text=True, timeout=30, env=server_env()
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_sidecar_auth_invalid_basic_value_exits(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kong_ai_metrics", "-p", str(tmp_path), "--metrics-basic-auth", "only-a-user-s3cret"],
        capture_output=True,
        text=True,
        timeout=30,
        env=server_env(),
    )
    assert result.returncode == 2
    assert "USER:PASSWORD" in result.stderr
    assert "s3cret" not in result.stderr


# ---------------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    for index, blob in enumerate(issued.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=index > 0)
    context = ssl.create_default_context(cafile=str(paths["ca"]))
    return {"paths": paths, "context": context}


def test_sidecar_tls_with_bearer_token(tmp_path: Path, plugin_info: dict[str, Any], certificates: dict[str, Any]) -> None:
    paths = certificates["paths"]
    env = {"KONG_AI_METRICS_TLS_KEY": str(paths["key"])}
    args = ["--metrics-tls-cert", str(paths["cert"]), "--metrics-bearer-token", "tok"]
    with spawned_server(tmp_path, args, env=env, ssl_context=certificates["context"]) as spawned:
        drive_exchange(spawned, plugin_info, count=3)
        assert spawned.get("/metrics")[0] == 401
        status, _, body = spawned.get("/metrics", {"Authorization": "Bearer tok"})
        assert status == 200
        assert sample_total(body, "kong_ai_llm_tokens_total", ai_model="gpt-4o-mini", token_type="total_tokens") == 3 * 37

        # Plain HTTP on the TLS port gets no HTTP response.
        host, port = spawned.base_url.removeprefix("https://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as plain:
            plain.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            reply = _read_all(plain)
        assert not reply.startswith(b"HTTP/")
        # The server is still healthy after the bad client.
        assert spawned.get("/healthz")[0] == 200
    assert "Traceback" not in spawned.stderr()


def test_sidecar_tls_missing_key_file_exits(tmp_path: Path, certificates: dict[str, Any]) -> None:
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    command = [
        sys.executable, "-m", "kong_ai_metrics", "-p", str(prefix), "--metrics-listen", f"127.0.0.1:{_free_port()}",
        "--metrics-tls-cert", str(certificates["paths"]["cert"]), "--metrics-tls-key", str(tmp_path / "absent.pem"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=server_env())
    assert result.returncode == 1
    assert "cannot load TLS certificate" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (prefix / "ai-metrics.socket").exists()


def test_sidecar_tls_cert_without_key_rejected(tmp_path: Path, certificates: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "kong_ai_metrics", "-p", str(tmp_path), "--metrics-tls-cert", str(certificates["paths"]["cert"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=server_env())
    assert result.returncode == 2
    assert "must be given together" in result.stderr


# ---------------------------------------------------------------------------------
# Hostile and slow clients


HOSTILE_REQUESTS = [
    b"garbage\r\n\r\n",
    b"GET /metrics HTTP/9.9\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
    b"GET /metrics HTTP/1.1\r\nX-Long: " + b"v" * 70000 + b"\r\n\r\n",
    b"GET /%ZZ/../../etc/passwd?%s%s%n HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
    b"GET /metrics HTTP/1.1\r\nAuthorization: Basic \xff\xfe\r\n\r\n",
]


def test_sidecar_hostile_requests_get_no_stack_trace(tmp_path: Path) -> None:
    with spawned_server(tmp_path, ["--metrics-basic-auth", "u:p"]) as spawned:
        host, port = spawned.base_url.removeprefix("http://").rsplit(":", 1)
        replies = []
        for raw in HOSTILE_REQUESTS:
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                try:
                    conn.sendall(raw)
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                replies.append(_read_all(conn))
        for raw, reply in zip(HOSTILE_REQUESTS, replies):
            assert b"Traceback" not in reply, raw[:40]
            assert b'File "' not in reply, raw[:40]
            assert b".py" not in reply, raw[:40]
        # A request line without a version is HTTP/0.9, whose response has no status line.
        statuses = [int(reply.split(b" ", 2)[1 if reply.startswith(b"HTTP/1.") else 0]) for reply in replies if reply]
        assert all(400 <= status < 600 for status in statuses), statuses
        assert len(statuses) >= len(HOSTILE_REQUESTS) - 1
        assert spawned.get("/healthz")[0] == 200
    assert "Traceback" not in spawned.stderr()


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = conn.recv(65536)
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _slow_connection(base_url: str) -> socket.socket:
    """Open a connection that sends half a request and then stalls."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
    return conn


def test_sidecar_slow_scrapes_keep_events_flowing(tmp_path: Path, plugin_info: dict[str, Any]) -> None:
    with spawned_server(tmp_path, []) as spawned:
        slow = [_slow_connection(spawned.base_url) for _ in range(8)]
        stop = threading.Event()
        scrape_statuses: list[int] = []

        def scrape_loop() -> None:
            while not stop.is_set():
                scrape_statuses.append(spawned.get("/metrics")[0])

        scrapers = [threading.Thread(target=scrape_loop) for _ in range(16)]
        for thread in scrapers:
            thread.start()
        try:
            kong_threads = [threading.Thread(target=drive_exchange, args=(spawned, plugin_info, 500)) for _ in range(4)]
            for thread in kong_threads:
                thread.start()
            for thread in kong_threads:
                thread.join()
        finally:
            stop.set()
            for thread in scrapers:
                thread.join()

        status, _, body = spawned.get("/metrics")
        assert status == 200
        assert sample_total(body, "kong_ai_llm_requests_total") == 2000
        assert sample_total(body, "kong_ai_llm_tokens_total", token_type="total_tokens") == 2000 * 37
        assert scrape_statuses
        assert set(scrape_statuses) == {200}
        for conn in slow:
            conn.close()


def test_sidecar_connection_limit_rejects_excess(tmp_path: Path, plugin_info: dict[str, Any]) -> None:
    with spawned_server(tmp_path, []) as spawned:
        slow = [_slow_connection(spawned.base_url) for _ in range(MAX_CONNECTIONS)]
        # Every slot is taken: the next client gets an immediate 503 instead of a thread.
        host, port = spawned.base_url.removeprefix("http://").rsplit(":", 1)

        def rejected() -> bool:
            with socket.create_connection((host, int(port)), timeout=10) as extra:
                return _read_all(extra).startswith(b"HTTP/1.1 503")

        assert wait_until(rejected, timeout=5)
        # Plugin events go on while the sidecar is saturated.
        drive_exchange(spawned, plugin_info, count=50)

        for conn in slow:
            conn.close()
        assert wait_until(lambda: spawned.get("/healthz")[0] == 200, timeout=10)
        status, _, body = spawned.get("/metrics")
        assert status == 200
        assert sample_total(body, "kong_ai_llm_requests_total", ai_model="gpt-4o-mini") == 50
    assert "Traceback" not in spawned.stderr()
