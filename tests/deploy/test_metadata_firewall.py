"""The metadata server kept from the consumer's uid (issue 13, item 12), for real: iptables in a fresh network
namespace where 169.254.169.254 is on `lo` with a listener, and the launcher refusing to start without the rule.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launcher import EXIT_CONFIG

from tests.deploy.test_launcher_run import launcher_env
from tests.support import file_written, wait_for

REPO = Path(__file__).resolve().parents[2]
CONSUMER_UID, GATEWAY_UID = 61002, 61001

# Runs as root inside `unshare --net`: a metadata server stand-in on 169.254.169.254:80, the launcher's rule, then a
# connection attempt as each uid. Prints {"setup": reason} when the kernel refuses the namespace's setup.
IN_NAMESPACE = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    from launcher import metadata_firewall

    def try_connect(host, uid):  # bash's /dev/tcp: the venv's python is not executable by any uid
        port = sys.argv[2] if host == "127.0.0.1" else "80"
        done = subprocess.run(["/bin/bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"],
                              user=uid, group=uid, extra_groups=[], cwd="/", capture_output=True, text=True)
        return "connected" if done.returncode == 0 else done.stderr.strip().splitlines()[0]

    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True, text=True)
        add = ["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]
        subprocess.run(add, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        print(json.dumps({"setup": f"{e.cmd}: {e.stderr.strip()}"})); sys.exit(0)
    metadata = socket.create_server(("169.254.169.254", 80), backlog=8)
    proxy = socket.create_server(("127.0.0.1", 0), backlog=8)
    sys.argv.append(str(proxy.getsockname()[1]))
    try:
        metadata_firewall.install([int(a) for a in sys.argv[1:2]])
        metadata_firewall.install([int(a) for a in sys.argv[1:2]])  # a relaunch adds no second rule
    except metadata_firewall.FirewallError as e:
        print(json.dumps({"setup": str(e)})); sys.exit(0)
    rules = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout
    print(json.dumps({
        "consumer": try_connect("169.254.169.254", int(sys.argv[1])),
        "root": try_connect("169.254.169.254", 0),
        "other_uid": try_connect("169.254.169.254", int(sys.argv[1]) + 100),
        "consumer_to_proxy": try_connect("127.0.0.1", int(sys.argv[1])),
        "rules": [r for r in rules.splitlines() if "169.254.169.254" in r],
    }))
    """
)


def test_the_consumers_uid_cannot_reach_the_metadata_server_and_root_can() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and iptables")
    for tool in ("unshare", "iptables", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-packages installs iptables)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "gateway-image")}
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", IN_NAMESPACE, str(CONSUMER_UID)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no network namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    if "setup" in seen:
        pytest.skip(f"the kernel here refuses the test's setup: {seen['setup']}")
    assert seen["root"] == "connected"  # the launcher still reads the login and mints tokens
    assert seen["other_uid"] == "connected"  # the rule is the consumer's, not a blanket block
    assert "Connection refused" in seen["consumer"], seen["consumer"]
    assert seen["consumer_to_proxy"] == "connected"  # the proxy on 127.0.0.1 stays reachable
    assert seen["rules"] == [
        f"-A OUTPUT -d 169.254.169.254/32 -m owner --uid-owner {CONSUMER_UID} -j REJECT "
        "--reject-with icmp-port-unreachable"
    ]


def test_without_the_rule_the_launcher_refuses_to_start_the_children(tmp_path: Path, shm_dir: Path) -> None:
    """No iptables (or no NET_ADMIN): exit 2, one clear line, and no child ever started."""
    env = launcher_env(
        tmp_path,
        shm_dir,
        CONSUMER_SERVICE_ACCOUNT="ib-app-paper@p.iam.gserviceaccount.com",
        IPTABLES=str(tmp_path / "no-iptables"),
        METADATA_PROXY_PORT=str(_free_port()),
    )
    if os.geteuid() == 0:
        env["CONSUMER_USER"] = str(CONSUMER_UID)
    done = subprocess.run(
        [sys.executable, "-m", "launcher", "run"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    (line,) = [json.loads(x) for x in done.stderr.splitlines() if '"CRITICAL"' in x]
    assert line["message"].startswith("bad configuration: cannot keep the metadata server from the consumer")
    assert "METADATA_FIREWALL_OPTIONAL=yes" in line["message"]
    assert not (tmp_path / "record.argv").exists()  # the gateway stand-in never ran
    assert not (tmp_path / "consumer.json").exists()


def test_the_opt_out_starts_the_consumer_pointed_at_the_proxy(tmp_path: Path, shm_dir: Path) -> None:
    port = _free_port()
    env = launcher_env(
        tmp_path,
        shm_dir,
        CONSUMER_SERVICE_ACCOUNT="ib-app-paper@p.iam.gserviceaccount.com",
        IPTABLES=str(tmp_path / "no-iptables"),
        METADATA_PROXY_PORT=str(port),
        METADATA_FIREWALL_OPTIONAL="yes",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(file_written(tmp_path / "consumer.json", proc), what="the consumer stand-in started")
        consumer_env = json.loads((tmp_path / "consumer.json").read_text())
        assert consumer_env["GCE_METADATA_HOST"] == consumer_env["GCE_METADATA_IP"] == f"127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # the launcher's proxy answers there
            s.sendall(b"GET / HTTP/1.0\r\nMetadata-Flavor: Google\r\n\r\n")
            reply = s.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.0 200")
        assert b"Metadata-Flavor: Google" in reply
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    warnings = [json.loads(x) for x in stderr.splitlines() if '"WARNING"' in x]
    assert any("METADATA_FIREWALL_OPTIONAL" in w["message"] for w in warnings), stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
