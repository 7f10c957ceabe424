"""``txmail ingress --processes N``: N real processes on one port, supervised by the first."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.amqp import drain
from tests.support.ports import free_port
from tests.support.processes import environment, spawn
from tests.support.waiting import wait_until
from tests.test_cli_ingress import http_status
from txmail.core.settings import Settings
from txmail.core.topology import Topology


def children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def listening_sockets(pids: list[int], port: int) -> int:
    """How many of the processes hold a socket listening on ``port`` (from /proc)."""
    listening = {
        line.split()[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
    }
    holders = 0
    for pid in pids:
        inodes = {link.removeprefix("socket:[").removesuffix("]") for link in _fd_links(pid)}
        holders += bool(inodes & listening)
    return holders


def _fd_links(pid: int) -> list[str]:
    """What the process's open descriptors point at; a starting process opens and
    closes descriptors while this reads them, so one gone meanwhile is skipped."""
    links = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            links.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return links


def ingress_env(settings: Settings, port: int) -> dict[str, str]:
    return {**environment(settings), "TXMAIL_HTTP_HOST": "127.0.0.1", "TXMAIL_HTTP_PORT": str(port)}


async def test_n_processes_share_the_port_and_stop_together_on_sigterm(
    settings: Settings, amqp_url: str
) -> None:
    port = free_port()
    parent = await spawn("ingress", "--processes", "2", env=ingress_env(settings, port))
    try:
        await wait_until(
            lambda: (
                len(children_of(parent.pid)) == 2
                and listening_sockets(children_of(parent.pid), port) == 2
            ),
            20,
            "two children listening on the port",
        )
        children = children_of(parent.pid)

        async def ready() -> bool:
            return await http_status(port, "GET", "/readyz", b"") == 200

        await wait_until(ready, 20, "readiness")
        for i in range(6):
            body = json.dumps({"dispatch_id": f"d{i}", "status": "sent"}).encode()

            async def taken(body: bytes = body) -> bool:
                # The kernel may hand the request to a child still connecting to
                # RabbitMQ: its 503 says "retry", as Braze does.
                status = await http_status(port, "POST", "/postbacks", body)
                assert status in (202, 503), status
                return status == 202

            await wait_until(taken, 20, f"postback d{i} accepted")
        parent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(parent.wait(), timeout=20) == 0
        assert not any(running(child) for child in children)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
    accepted = await drain(amqp_url, Topology(settings.namespace).tracker_queue, 6)
    assert sorted(json.loads(m.body)["dispatch_id"] for m in accepted) == [
        f"d{i}" for i in range(6)
    ]


async def test_a_child_that_dies_stops_the_others_and_the_parent_fails(
    settings: Settings,
) -> None:
    port = free_port()
    parent = await spawn("ingress", "--processes", "2", env=ingress_env(settings, port))
    try:
        await wait_until(lambda: len(children_of(parent.pid)) == 2, 20, "two children")
        dead, survivor = children_of(parent.pid)
        os.kill(dead, signal.SIGKILL)
        assert await asyncio.wait_for(parent.wait(), timeout=20) != 0
        assert not running(survivor)
        _, stderr = await parent.communicate()
        assert b"an ingress process exited" in stderr
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_a_port_in_use_exits_1_with_the_usual_message(settings: Settings) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        parent = await spawn("ingress", "--processes", "2", env=ingress_env(settings, port))
        _, stderr = await asyncio.wait_for(parent.communicate(), timeout=20)
    assert parent.returncode == 1
    assert f"txmail: port {port} is already in use" in stderr.decode()
    assert b"Traceback" not in stderr


async def test_processes_must_be_a_positive_number(settings: Settings) -> None:
    parent = await spawn("ingress", "--processes", "0", env=ingress_env(settings, free_port()))
    _, stderr = await asyncio.wait_for(parent.communicate(), timeout=20)
    assert parent.returncode == 2
    assert b"--processes" in stderr


async def test_children_stop_when_the_parent_is_killed(settings: Settings, tmp_path: Path) -> None:
    """A supervisor SIGKILLed (OOM killer, kill -9) leaves no ingress holding the port."""
    port = free_port()
    # Output to a file, not a pipe: the children inherit it, and asyncio's wait() for
    # a process with pipes returns only once every holder of them has closed them.
    with (tmp_path / "ingress.log").open("wb") as log:
        parent = await spawn(
            "ingress", "--processes", "2", env=ingress_env(settings, port), stdout=log, stderr=log
        )
    await wait_until(lambda: len(children_of(parent.pid)) == 2, 20, "two children")
    children = children_of(parent.pid)
    parent.kill()
    await asyncio.wait_for(parent.wait(), 10)
    await wait_until(lambda: not any(running(c) for c in children), 20, "the children gone")


def test_a_child_whose_supervisor_died_before_it_could_ask_to_follow_it_ends_at_once() -> None:
    # The window no kill from a test can aim at: the supervisor gone between the fork and
    # the child's prctl. The child then has another parent already; it must not run on.
    check = (
        "import os, sys; from txmail.cli.ingress_processes import _end_with; "
        "_end_with(int(sys.argv[1])); print('running')"
    )
    for supervisor, runs in ((os.getpid(), True), (os.getpid() + 1_000_000, False)):
        child = subprocess.run(
            [sys.executable, "-c", check, str(supervisor)], capture_output=True, check=False
        )
        assert (child.stdout == b"running\n") is runs, (supervisor, child)
