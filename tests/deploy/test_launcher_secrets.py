"""Where the IB login comes from, in which order, and that it never prints."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
from launcher.secrets import (
    CREDENTIAL_VARIABLES,
    CredentialError,
    Secret,
    resolve_credentials,
    scrubbed_environment,
    secret_version_name,
)

PASSWORD = "s3cr3t-Pa$$"


def accessor_returning(payload: bytes, seen: list[str] | None = None):
    def access(name: str) -> bytes:
        if seen is not None:
            seen.append(name)
        return payload

    return access


def test_a_secret_never_prints(caplog: pytest.LogCaptureFixture) -> None:
    s = Secret(PASSWORD)
    assert repr(s) == "Secret('***')"
    assert str(s) == "***"
    assert f"{s} {s!r} {s:>20}" == "*** Secret('***') ***"
    assert PASSWORD not in repr({"password": s, "list": [s]})
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("login %s %r", s, s)
    assert PASSWORD not in caplog.text
    assert s.reveal() == PASSWORD
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(AttributeError):
        s._value = "x"  # type: ignore[misc]
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")


def test_secret_manager_comes_first_and_reads_json() -> None:
    seen: list[str] = []
    payload = json.dumps({"username": "trader1", "password": PASSWORD}).encode()
    creds = resolve_credentials(
        {"IB_CREDENTIALS_SECRET": "projects/p/secrets/ib-login/versions/3"}, accessor_returning(payload, seen)
    )
    assert seen == ["projects/p/secrets/ib-login/versions/3"]
    assert creds.username.reveal() == "trader1"
    assert creds.password.reveal() == PASSWORD
    assert creds.source == "secret-manager:projects/p/secrets/ib-login/versions/3"
    assert PASSWORD not in repr(creds)


@pytest.mark.parametrize(
    ("raw", "project", "expected"),
    [
        ("projects/p/secrets/s", None, "projects/p/secrets/s/versions/latest"),
        ("projects/p/secrets/s/versions/latest", None, "projects/p/secrets/s/versions/latest"),
        ("ib-login", "proj-1", "projects/proj-1/secrets/ib-login/versions/latest"),
    ],
)
def test_secret_names(raw: str, project: str | None, expected: str) -> None:
    assert secret_version_name(raw, project) == expected


@pytest.mark.parametrize("raw", ["ib-login", "projects/p/secrets/", "projects/p/topics/t", "a b"])
def test_bad_secret_names_are_refused(raw: str) -> None:
    with pytest.raises(CredentialError):
        secret_version_name(raw, None)


def test_the_secret_together_with_plain_variables_is_refused() -> None:
    with pytest.raises(CredentialError, match="IB_PASSWORD"):
        resolve_credentials(
            {"IB_CREDENTIALS_SECRET": "projects/p/secrets/s", "IB_PASSWORD": PASSWORD},
            accessor_returning(b"{}"),
        )


@pytest.mark.parametrize(
    "payload",
    [b"not json " + PASSWORD.encode(), b'["x"]', json.dumps({"username": "u"}).encode(), b"\xff\xfe"],
)
def test_a_malformed_secret_payload_is_refused_without_echoing_it(payload: bytes) -> None:
    with pytest.raises(CredentialError) as error:
        resolve_credentials({"IB_CREDENTIALS_SECRET": "projects/p/secrets/s"}, accessor_returning(payload))
    assert PASSWORD not in str(error.value)
    assert "projects/p/secrets/s/versions/latest" in str(error.value)


def test_an_unreadable_secret_is_a_configuration_error_not_a_fallback() -> None:
    def denied(name: str) -> bytes:
        raise PermissionError(f"403 Permission denied on {name}")

    with pytest.raises(CredentialError, match="cannot read projects/p/secrets/s/versions/latest"):
        resolve_credentials({"IB_CREDENTIALS_SECRET": "projects/p/secrets/s"}, denied)


def test_files_then_plain_variables(tmp_path) -> None:
    (tmp_path / "user").write_text("fileuser\n")
    (tmp_path / "pass").write_text(PASSWORD + "\n")
    creds = resolve_credentials(
        {"IB_USERNAME_FILE": str(tmp_path / "user"), "IB_PASSWORD_FILE": str(tmp_path / "pass")}
    )
    assert (creds.username.reveal(), creds.password.reveal(), creds.source) == ("fileuser", PASSWORD, "file")

    creds = resolve_credentials({"IB_USERNAME": "envuser", "IB_PASSWORD": PASSWORD})
    assert (creds.username.reveal(), creds.password.reveal(), creds.source) == ("envuser", PASSWORD, "env")

    mixed = resolve_credentials({"IB_USERNAME": "envuser", "IB_PASSWORD_FILE": str(tmp_path / "pass")})
    assert (mixed.password.reveal(), mixed.source) == (PASSWORD, "file")


def test_a_variable_and_its_file_together_are_refused(tmp_path) -> None:
    (tmp_path / "pass").write_text(PASSWORD)
    with pytest.raises(CredentialError, match="both IB_PASSWORD and IB_PASSWORD_FILE"):
        resolve_credentials({"IB_USERNAME": "u", "IB_PASSWORD": "x", "IB_PASSWORD_FILE": str(tmp_path / "pass")})


def test_missing_login_names_the_variables(tmp_path) -> None:
    with pytest.raises(CredentialError, match=r"IB_CREDENTIALS_SECRET.*IB_USERNAME / IB_USERNAME_FILE"):
        resolve_credentials({})
    with pytest.raises(CredentialError, match="IB_PASSWORD_FILE: cannot read"):
        resolve_credentials({"IB_USERNAME": "u", "IB_PASSWORD_FILE": str(tmp_path / "missing")})
    with pytest.raises(CredentialError, match="line break"):
        resolve_credentials({"IB_USERNAME": "u", "IB_PASSWORD": "a\nTradingMode=live"})


def test_children_never_see_the_login() -> None:
    env = {v: "x" for v in CREDENTIAL_VARIABLES} | {"PATH": "/bin", "TRADING_MODE": "paper"}
    assert scrubbed_environment(env) == {"PATH": "/bin", "TRADING_MODE": "paper"}
