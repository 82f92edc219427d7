"""The consumer's metadata server: the few paths google-auth reads, with the CONSUMER account's tokens.

The VM's own account (the metadata server's) can read the IB login; the consumer must never hold its token. So the
launcher firewalls 169.254.169.254 from the consumer's uid (launcher/metadata_firewall.py) and points google-auth at
this proxy on 127.0.0.1 (GCE_METADATA_HOST, GCE_METADATA_IP). A token it serves is the consumer account's, minted by
IAM Credentials `generateAccessToken` with the VM's token, and cached until shortly before it expires. Anything else
is 404, as GKE's metadata concealment does: the consumer learns nothing about the VM it does not need.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from launcher.logs import log

DEFAULT_METADATA_ROOT = "http://169.254.169.254/computeMetadata/v1/"
DEFAULT_IAM_CREDENTIALS_ROOT = "https://iamcredentials.googleapis.com/v1/"
DEFAULT_PORT = 8988
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
REFRESH_MARGIN_SECONDS = 300.0  # a token is re-minted this long before it expires (google-auth refreshes at ~225 s)
LIFETIME = "3600s"
_UPSTREAM_TIMEOUT = 10.0
_SA_PATH = re.compile(r"^/computeMetadata/v1/instance/service-accounts/([^/]+)/([a-z-]*)$")


class MetadataUpstreamError(RuntimeError):
    """The metadata server or IAM Credentials did not give a token; the message never holds a token."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    consumer_account: str  # the email whose tokens the consumer gets
    port: int = DEFAULT_PORT
    metadata_root: str = DEFAULT_METADATA_ROOT  # configurable so tests can stand in for both upstreams
    iam_credentials_root: str = DEFAULT_IAM_CREDENTIALS_ROOT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProxySettings | None:
        """None when CONSUMER_SERVICE_ACCOUNT is unset (local runs: the consumer uses its own credentials)."""
        account = env.get("CONSUMER_SERVICE_ACCOUNT", "").strip()
        if not account:
            return None
        return cls(
            consumer_account=account,
            port=int(env.get("METADATA_PROXY_PORT", "") or DEFAULT_PORT),
            metadata_root=_slash(env.get("METADATA_UPSTREAM_ROOT", "") or DEFAULT_METADATA_ROOT),
            iam_credentials_root=_slash(env.get("IAM_CREDENTIALS_ROOT", "") or DEFAULT_IAM_CREDENTIALS_ROOT),
        )

    @property
    def host(self) -> str:
        """What the consumer's GCE_METADATA_HOST and GCE_METADATA_IP are set to."""
        return f"127.0.0.1:{self.port}"


@dataclass
class _Cached:
    token: str
    expires_at: float  # on the minter's clock


@dataclass
class TokenMinter:
    """The consumer account's access tokens, one per scope set, re-minted REFRESH_MARGIN_SECONDS before expiry."""

    settings: ProxySettings
    clock: Callable[[], float] = time.time  # wall clock: IAM's expireTime is a UTC timestamp
    _cache: dict[tuple[str, ...], _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _project: str | None = None

    def token(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        """(access token, seconds until it expires)."""
        with self._lock:
            cached = self._cache.get(scopes)
            now = self.clock()
            if cached is None or cached.expires_at - now <= REFRESH_MARGIN_SECONDS:
                cached = self._mint(scopes)
                self._cache[scopes] = cached
                now = self.clock()
            return cached.token, max(0, int(cached.expires_at - now))

    def project_id(self) -> str:
        with self._lock:
            if self._project is None:
                self._project = self._metadata("project/project-id").decode()
            return self._project

    def _mint(self, scopes: tuple[str, ...]) -> _Cached:
        vm = json.loads(self._metadata("instance/service-accounts/default/token"))
        email = urllib.parse.quote(self.settings.consumer_account, safe="@.")
        url = f"{self.settings.iam_credentials_root}projects/-/serviceAccounts/{email}:generateAccessToken"
        body = json.dumps({"scope": list(scopes), "lifetime": LIFETIME}).encode()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {vm['access_token']}", "Content-Type": "application/json"},
        )
        reply = json.loads(_fetch(request, "IAM Credentials generateAccessToken"))
        expires_at = _timestamp(reply["expireTime"])
        log("minted the consumer's access token", account=self.settings.consumer_account, expires=reply["expireTime"])
        return _Cached(reply["accessToken"], expires_at)

    def _metadata(self, path: str) -> bytes:
        request = urllib.request.Request(self.settings.metadata_root + path, headers={"Metadata-Flavor": "Google"})
        return _fetch(request, f"metadata {path}")


def _fetch(request: urllib.request.Request, what: str) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=_UPSTREAM_TIMEOUT) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as e:
        raise MetadataUpstreamError(f"{what}: HTTP {e.code}") from None
    except (OSError, ValueError) as e:
        raise MetadataUpstreamError(f"{what}: {type(e).__name__}: {e}") from None


def _timestamp(rfc3339: str) -> float:
    """IAM's expireTime ("2026-01-01T00:00:00.123456789Z"): fractions beyond what datetime takes are dropped."""
    whole = re.sub(r"\.\d+", "", rfc3339.strip()).replace("Z", "+00:00")
    return datetime.fromisoformat(whole).timestamp()


def _slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


Reply = tuple[int, str, bytes]  # status, content type, body
_NOT_FOUND: Reply = (404, "text/plain", b"Not Found\n")


def route(minter: TokenMinter, path: str, query: Mapping[str, list[str]]) -> Reply:
    """The paths google-auth reads; everything else (attributes, user-data, other accounts, identity) is 404."""
    if path == "/":  # google-auth's ping: only the Metadata-Flavor response header matters
        return 200, "application/text", b"computeMetadata/\n"
    if path == "/computeMetadata/v1/project/project-id":
        return 200, "application/text", minter.project_id().encode()
    match = _SA_PATH.match(path)
    if match is None or match.group(1) not in ("default", minter.settings.consumer_account):
        return _NOT_FOUND
    return _service_account(minter, match.group(2), query)


def _service_account(minter: TokenMinter, leaf: str, query: Mapping[str, list[str]]) -> Reply:
    account = minter.settings.consumer_account
    if leaf == "" and query.get("recursive") == ["true"]:
        info = {"aliases": ["default"], "email": account, "scopes": [CLOUD_PLATFORM]}
        return 200, "application/json", json.dumps(info).encode()
    if leaf == "email":
        return 200, "application/text", account.encode()
    if leaf == "scopes":
        return 200, "application/text", f"{CLOUD_PLATFORM}\n".encode()
    if leaf == "token":
        raw = ",".join(query.get("scopes", [])) or CLOUD_PLATFORM
        token, expires_in = minter.token(tuple(sorted({s for s in raw.split(",") if s})))
        reply = {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}
        return 200, "application/json", json.dumps(reply).encode()
    return _NOT_FOUND


def make_handler(minter: TokenMinter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "Metadata Server for the consumer"
        sys_version = ""

        def do_GET(self) -> None:
            # As the real server: the header proves the request is not a browser's or a forwarded one (SSRF).
            if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
                self._reply(403, "text/plain", b"Missing Metadata-Flavor:Google header.\n")
                return
            url = urllib.parse.urlsplit(self.path)
            try:
                status, content_type, body = route(minter, url.path, urllib.parse.parse_qs(url.query))
            except MetadataUpstreamError as e:
                log("metadata proxy: upstream failed", severity="ERROR", error=str(e))
                status, content_type, body = 502, "text/plain", b"upstream unavailable\n"
            self._reply(status, content_type, body)

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: a line per token request would flood the log; failures are logged in do_GET."""

    return Handler


def serve(minter: TokenMinter) -> ThreadingHTTPServer:
    """Listening on 127.0.0.1 only, served from a daemon thread of the launcher; call shutdown() to stop."""
    server = ThreadingHTTPServer(("127.0.0.1", minter.settings.port), make_handler(minter))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metadata-proxy", daemon=True).start()
    log(
        "metadata proxy for the consumer",
        address=f"127.0.0.1:{server.server_address[1]}",
        account=minter.settings.consumer_account,
    )
    return server


__all__ = ["MetadataUpstreamError", "ProxySettings", "TokenMinter", "serve"]
