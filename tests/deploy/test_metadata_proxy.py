"""The consumer's metadata proxy (issue 13, item 12): google-auth, unmodified and in a process of its own, gets the
consumer account's token from it, never the VM's. There is no emulator for the metadata server or IAM Credentials, so
a local HTTP server plays both (the proxy's upstream URLs are settings); the proxy runs on a clock the test moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from launcher.metadata_proxy import REFRESH_MARGIN_SECONDS, ProxySettings, TokenMinter, serve

CONSUMER = "ib-app-paper@p.iam.gserviceaccount.com"
VM_TOKEN = "vm-token-must-not-reach-the-consumer"
PROJECT = "stand-in-project"
EXPIRE = datetime(2030, 1, 1, tzinfo=UTC)  # the tokens' fixed expiry; the proxy's clock is moved towards it


@dataclass
class StandIn:
    """Plays the metadata server (the VM's token, the project id) and IAM Credentials (generateAccessToken)."""

    url: str
    mints: list[dict[str, object]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def upstream() -> Iterator[StandIn]:
    state = StandIn("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.paths.append(self.path)
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._send(403, b"")
            if self.path == "/computeMetadata/v1/instance/service-accounts/default/token":
                return self._send(200, json.dumps({"access_token": VM_TOKEN, "expires_in": 3599}).encode())
            if self.path == "/computeMetadata/v1/project/project-id":
                return self._send(200, PROJECT.encode())
            return self._send(404, b"")

        def do_POST(self) -> None:
            state.paths.append(self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.headers.get("Authorization") != f"Bearer {VM_TOKEN}":
                return self._send(401, b"{}")
            if self.path != f"/v1/projects/-/serviceAccounts/{CONSUMER}:generateAccessToken":
                return self._send(404, b"{}")
            state.mints.append(body)
            reply = {
                "accessToken": f"consumer-token-{len(state.mints)}",
                "expireTime": "2030-01-01T00:00:00.123456789Z",
            }
            return self._send(200, json.dumps(reply).encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Proxy:
    host: str
    clock: list[float]


@pytest.fixture
def proxy(upstream: StandIn) -> Iterator[Proxy]:
    clock = [EXPIRE.timestamp() - 3600]
    settings = ProxySettings(
        consumer_account=CONSUMER,
        port=0,
        metadata_root=f"{upstream.url}/computeMetadata/v1/",
        iam_credentials_root=f"{upstream.url}/v1/",
    )
    server = serve(TokenMinter(settings, clock=lambda: clock[0]))
    yield Proxy(f"127.0.0.1:{server.server_address[1]}", clock)
    server.shutdown()
    server.server_close()


def get(proxy: Proxy, path: str, flavor: bool = True, **headers: str) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(
        f"http://{proxy.host}{path}", headers={**({"Metadata-Flavor": "Google"} if flavor else {}), **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Metadata-Flavor")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Metadata-Flavor")


GOOGLE_AUTH_CHILD = textwrap.dedent(
    """
    import json
    import google.auth
    import google.auth.compute_engine
    from google.auth.transport.requests import Request

    credentials, project = google.auth.default()  # the discovery a client library does: env, gcloud, then GCE
    assert isinstance(credentials, google.auth.compute_engine.Credentials), type(credentials)
    credentials.refresh(Request())
    print(json.dumps({"token": credentials.token, "project": project, "email": credentials.service_account_email}))
    """
)


def test_google_auth_in_a_child_gets_the_consumer_accounts_token_and_the_project(
    proxy: Proxy, upstream: StandIn, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),  # no application-default credentials to find
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": proxy.host,
        "GCE_METADATA_IP": proxy.host,
    }
    done = subprocess.run(
        [sys.executable, "-c", GOOGLE_AUTH_CHILD], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"token": "consumer-token-1", "project": PROJECT, "email": CONSUMER}
    # Minted by impersonation with the VM's token (the stand-in refuses any other bearer), for cloud-platform.
    assert upstream.mints == [{"scope": ["https://www.googleapis.com/auth/cloud-platform"], "lifetime": "3600s"}]


def test_without_the_metadata_flavor_header_or_when_forwarded_it_is_refused(proxy: Proxy, upstream: StandIn) -> None:
    for status, body, flavor in (
        get(proxy, "/computeMetadata/v1/instance/service-accounts/default/token", flavor=False),
        get(proxy, "/computeMetadata/v1/instance/service-accounts/default/token", **{"Metadata-Flavor": "google"}),
        get(proxy, "/computeMetadata/v1/instance/service-accounts/default/token", **{"X-Forwarded-For": "10.0.0.1"}),
    ):
        assert (status, flavor) == (403, "Google")
        assert b"token" not in body
    assert upstream.mints == []  # refused before anything was minted


def test_anything_but_the_consumers_own_paths_is_404(proxy: Proxy, upstream: StandIn) -> None:
    for path in (
        "/computeMetadata/v1/instance/attributes/user-data",  # the VM's cloud-init (the env file's contents)
        "/computeMetadata/v1/instance/service-accounts/other@p.iam.gserviceaccount.com/token",
        "/computeMetadata/v1/instance/service-accounts/",
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
        "/computeMetadata/v1/project/attributes/ssh-keys",
        "/computeMetadata/v1beta1/instance/service-accounts/default/token",
        "/computeMetadata/v1/instance/service-accounts/default/../../../project/project-id",
    ):
        status, _, flavor = get(proxy, path)
        assert (status, flavor) == (404, "Google"), path
    assert upstream.mints == []
    assert not [p for p in upstream.paths if "user-data" in p or "ssh-keys" in p]  # nothing forwarded


def test_the_account_info_names_the_consumers_account_only(proxy: Proxy) -> None:
    status, body, _ = get(proxy, "/computeMetadata/v1/instance/service-accounts/default/?recursive=true")
    assert status == 200
    assert json.loads(body)["email"] == CONSUMER
    assert get(proxy, f"/computeMetadata/v1/instance/service-accounts/{CONSUMER}/email")[:2] == (200, CONSUMER.encode())
    assert get(proxy, "/")[0::2] == (200, "Google")  # google-auth's ping looks at the response header


def test_the_token_is_cached_and_minted_again_shortly_before_it_expires(proxy: Proxy, upstream: StandIn) -> None:
    path = "/computeMetadata/v1/instance/service-accounts/default/token"

    def token() -> dict[str, object]:
        status, body, _ = get(proxy, path)
        assert status == 200
        reply: dict[str, object] = json.loads(body)
        assert reply["token_type"] == "Bearer"
        return reply

    assert token() == {"access_token": "consumer-token-1", "expires_in": 3600, "token_type": "Bearer"}
    proxy.clock[0] = EXPIRE.timestamp() - REFRESH_MARGIN_SECONDS - 1  # still outside the margin: the cached one
    assert token() == {
        "access_token": "consumer-token-1",
        "expires_in": int(REFRESH_MARGIN_SECONDS) + 1,
        "token_type": "Bearer",
    }
    assert len(upstream.mints) == 1
    proxy.clock[0] = EXPIRE.timestamp() - REFRESH_MARGIN_SECONDS  # inside it: a new one before the old expires
    assert token()["access_token"] == "consumer-token-2"
    assert len(upstream.mints) == 2
    # Scopes asked for are what is minted (and cached apart from cloud-platform's).
    status, body, _ = get(proxy, path + "?scopes=https://www.googleapis.com/auth/pubsub")
    assert (status, json.loads(body)["access_token"]) == (200, "consumer-token-3")
    assert upstream.mints[-1]["scope"] == ["https://www.googleapis.com/auth/pubsub"]


def test_no_reply_ever_carries_the_vms_token(proxy: Proxy) -> None:
    bodies = [
        get(proxy, p)[1]
        for p in (
            "/computeMetadata/v1/instance/service-accounts/default/token",
            f"/computeMetadata/v1/instance/service-accounts/{CONSUMER}/token",
            "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
        )
    ]
    assert all(VM_TOKEN.encode() not in b for b in bodies)
    assert json.loads(bodies[1])["access_token"] == "consumer-token-1"  # by email too, from the cache
