"""The wheel carries what the consumer reads at run time (schemas/, infra/pubsub.yaml, infra/schedules.yaml), so
the image installs it non-editable: built with `pip wheel`, installed into a fresh venv, imported from outside the
repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from consumer.data import PUBSUB_DECLARATION, SCHEDULES_DECLARATION, SCHEMA_DIR
from consumer.schedules import job_intents
from devstack.provision import Topology

REPO = Path(__file__).resolve().parents[2]

# Run by the fresh venv's interpreter: what an installed consumer finds, and where it found it.
CHECK = """
import importlib.util
import json
import yaml
import consumer
from consumer.data import PUBSUB_DECLARATION
from consumer.schedules import job_intents
from consumer.schemas import Schemas

schemas = Schemas()
schemas.validate("intents/ping.schema.json", {})  # compiles every validator, $refs resolved across files
print(json.dumps({
    "consumer": consumer.__file__,
    "schemas": sorted(schemas.names()),
    "jobs": job_intents(),
    "topics": sorted(yaml.safe_load(PUBSUB_DECLARATION.read_text())["topics"]),
    "devstack": importlib.util.find_spec("devstack") is not None,
}))
"""


def test_the_data_links_are_the_top_level_files() -> None:
    """consumer/_data/ points at the single source: in a checkout the paths are the top-level files themselves."""
    assert SCHEMA_DIR == REPO / "schemas"
    assert PUBSUB_DECLARATION == REPO / "infra" / "pubsub.yaml"
    assert SCHEDULES_DECLARATION == REPO / "infra" / "schedules.yaml"


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def image_context(into: Path) -> Path:
    """The files the image builds the wheel from (the `!` lines of gateway-image/Dockerfile.dockerignore, but the
    launcher's), copied as they are: building in the checkout would pick up a stale `build/` left by an earlier
    build, and the wheel would carry files the repository no longer has."""
    ignore = (REPO / "gateway-image" / "Dockerfile.dockerignore").read_text().splitlines()
    wanted = {line[1:].removesuffix("/**") for line in ignore if line.startswith("!") and "launcher" not in line}
    for name in wanted:
        source, target = REPO / name, into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    context = image_context(tmp_path_factory.mktemp("context"))
    subprocess.run([*PIP, "wheel", str(context), "--no-deps", "-w", str(wheels)], check=True)
    (built,) = wheels.glob("*.whl")
    return built


@pytest.mark.wheel
def test_the_wheel_leaves_the_local_stack_out(wheel: Path) -> None:
    """devstack/ (make run's emulators, provisioning, seeding) is for developers and tests: not in the service."""
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n}
    assert top == {"consumer", "ibsim"}, top
    assert not [n for n in names if "devstack" in n.split("/")]


@pytest.mark.slow
@pytest.mark.wheel
def test_the_installed_wheel_reads_every_schema_and_declaration(wheel: Path, tmp_path: Path) -> None:

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The third-party dependencies come from this venv rather than a download: a path line in a .pth adds the
    # directory without running its own .pth files, so this checkout's editable install stays out.
    Path(site, "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*PIP, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [python, "-I", "-c", CHECK], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    ).stdout
    found = json.loads(out)

    assert Path(found["consumer"]).is_relative_to(venv), "imported from the checkout, not the installed wheel"
    assert found["schemas"] == sorted(str(p.relative_to(SCHEMA_DIR)) for p in SCHEMA_DIR.rglob("*.schema.json"))
    assert found["jobs"] == job_intents() != {}
    assert found["topics"] == sorted(Topology.load().topics) != []
    assert not found["devstack"], "the installed service can import the local stack"
