"""IB credentials: Secret Manager first, then *_FILE, then plain variables; held in a type that never prints them."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

SecretAccessor = Callable[[str], bytes]

# Variables that carry or point at the login; they are removed from every child's environment.
CREDENTIAL_VARIABLES = (
    "IB_CREDENTIALS_SECRET",
    "IB_USERNAME",
    "IB_USERNAME_FILE",
    "IB_PASSWORD",
    "IB_PASSWORD_FILE",
    # The same, by the names of other gateway images (launcher/aliases.py).
    "TWS_USERID",
    "TWS_PASSWORD",
    "TWS_PASSWORD_FILE",
)

_SECRET_NAME = re.compile(r"^projects/[^/\s]+/secrets/[A-Za-z0-9_-]+(/versions/(latest|[0-9]+))?$")
_SHORT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class CredentialError(ValueError):
    """The login cannot be resolved; the message names variables, never values."""


class SecretUnavailable(RuntimeError):
    """Secret Manager could not be asked now (unavailable, a deadline, a token, a grant still propagating at first
    boot): worth a restart, unlike a CredentialError, which the VM's unit never restarts (exit 2)."""


# The google.api_core / google.auth errors that say "not now" rather than "never": by name, so that this module
# imports no client library before it is needed.
TRANSIENT_ERRORS = {
    "ServiceUnavailable", "DeadlineExceeded", "InternalServerError", "TooManyRequests", "ResourceExhausted",
    "PermissionDenied", "RetryError", "TransportError", "RefreshError", "GatewayTimeout", "Aborted",
}  # fmt: skip


class Secret:
    """A string that prints as '***' in repr, str, f-strings, logs and tracebacks; `reveal()` is the only way out."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class Credentials:
    username: Secret
    password: Secret
    source: str  # for the log: "secret-manager:projects/p/secrets/s/versions/latest", "file" or "env"


def secret_version_name(raw: str, project: str | None) -> str:
    """Accepts a full version name, a secret name (-> latest) or a bare secret id (needs GOOGLE_CLOUD_PROJECT)."""
    raw = raw.strip()
    if _SECRET_NAME.match(raw):
        return raw if "/versions/" in raw else f"{raw}/versions/latest"
    if _SHORT_NAME.match(raw):
        if not project:
            raise CredentialError("IB_CREDENTIALS_SECRET is a bare secret id: set GOOGLE_CLOUD_PROJECT too")
        return f"projects/{project}/secrets/{raw}/versions/latest"
    raise CredentialError(
        "IB_CREDENTIALS_SECRET: expected projects/PROJECT/secrets/SECRET[/versions/VERSION] or a secret id"
    )


def secret_manager_accessor() -> SecretAccessor:
    """Reads a secret version with the runtime's service account (google-cloud-secret-manager, default retries)."""
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()

    def access(name: str) -> bytes:
        return client.access_secret_version(request={"name": name}).payload.data

    return access


def resolve_credentials(env: Mapping[str, str], accessor: SecretAccessor | None = None) -> Credentials:
    """Order: IB_CREDENTIALS_SECRET (JSON {"username", "password"}), else per field X_FILE, else X.

    Mixing the secret with the other variables, or X with X_FILE, is refused rather than guessed: the wrong account
    logging in (or a stale password retried until IB locks the account) costs more than a start-up error.
    """
    secret_name = env.get("IB_CREDENTIALS_SECRET", "").strip()
    plain = [v for v in CREDENTIAL_VARIABLES[1:] if env.get(v)]
    if secret_name:
        if plain:
            raise CredentialError(f"IB_CREDENTIALS_SECRET is set together with {', '.join(plain)}: set only one way")
        name = secret_version_name(secret_name, env.get("GOOGLE_CLOUD_PROJECT"))
        access = accessor if accessor is not None else secret_manager_accessor()
        try:
            payload = access(name)
        except Exception as e:  # the client's own message names the secret, never its value
            if type(e).__name__ in TRANSIENT_ERRORS:
                raise SecretUnavailable(f"cannot read {name} now: {type(e).__name__}: {e}") from None
            raise CredentialError(f"cannot read {name}: {type(e).__name__}: {e}") from None
        username, password = _parse_secret_payload(payload, name)
        return Credentials(Secret(username), Secret(password), f"secret-manager:{name}")

    username, from_file_u = _field(env, "IB_USERNAME")
    password, from_file_p = _field(env, "IB_PASSWORD")
    source = "file" if (from_file_u or from_file_p) else "env"
    return Credentials(Secret(username), Secret(password), source)


def _parse_secret_payload(payload: bytes, name: str) -> tuple[str, str]:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialError(f'{name}: the payload must be JSON {{"username": ..., "password": ...}}') from None
    if not isinstance(data, dict):
        raise CredentialError(f'{name}: the payload must be a JSON object {{"username": ..., "password": ...}}')
    missing = [k for k in ("username", "password") if not isinstance(data.get(k), str) or not data.get(k)]
    if missing:
        raise CredentialError(f"{name}: the JSON lacks a non-empty {' and '.join(missing)}")
    return _checked(data["username"], f"{name} username"), _checked(data["password"], f"{name} password")


def _field(env: Mapping[str, str], var: str) -> tuple[str, bool]:
    file_var = f"{var}_FILE"
    path, value = env.get(file_var, ""), env.get(var, "")
    if path and value:
        raise CredentialError(f"both {var} and {file_var} are set: set only one")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise CredentialError(f"{file_var}: cannot read {path}: {e.strerror}") from None
        return _checked(text.rstrip("\r\n"), file_var), True
    if value:
        return _checked(value, var), False
    raise CredentialError(f"no IB login: set IB_CREDENTIALS_SECRET, or {var} / {file_var}")


def _checked(value: str, what: str) -> str:
    if not value:
        raise CredentialError(f"{what} is empty")
    if any(c in value for c in "\r\n\x00"):
        raise CredentialError(f"{what} contains a line break or NUL")
    return value


def scrubbed_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for children: the login never reaches the consumer, the gateway's command line or `ps`."""
    return {k: v for k, v in env.items() if k not in CREDENTIAL_VARIABLES}


__all__ = [
    "CREDENTIAL_VARIABLES",
    "CredentialError",
    "Credentials",
    "Secret",
    "resolve_credentials",
    "scrubbed_environment",
    "secret_manager_accessor",
    "secret_version_name",
]
