"""``txmail ingress --processes N``: N ingress processes on one port, one per core.

Python serves HTTP on one core per process. The parent starts N children that each
listen on TXMAIL_HTTP_PORT with SO_REUSEPORT (the kernel spreads connections among
them) and supervises them: SIGTERM and SIGINT are passed on to every child, which
finishes its requests in flight as a single ingress does; a child that exits on its
own stops the others, and the parent exits non-zero, so that whatever supervises the
parent (systemd, Kubernetes) sees the failure and restarts the whole group.
"""

import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
from types import FrameType

import structlog

from txmail.core.errors import CannotStart, ConfigError
from txmail.core.http import why_not_listening
from txmail.core.settings import Settings

log = structlog.get_logger(__name__)

# The hidden option a child is started with: listen with SO_REUSEPORT.
CHILD_OPTION = "--reuse-port"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def supervise_ingress(settings: Settings, processes: int) -> int:
    """Run ``processes`` ingress children until stopped; the exit code of the group."""
    if settings.http_port == 0:
        raise ConfigError("--processes needs a fixed TXMAIL_HTTP_PORT, not 0 (any free port)")
    _check_port_free(settings.http_host, settings.http_port)
    command = [sys.executable, "-m", "txmail.cli", "ingress", CHILD_OPTION]
    end_with_parent = functools.partial(_end_with, os.getpid())
    started = (
        subprocess.Popen(command, preexec_fn=end_with_parent)  # noqa: S603 -- our own
        for _ in range(processes)
    )
    children = {child.pid: child for child in started}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    failed = False
    while children:
        pid, status = os.wait()
        child = children.pop(pid, None)
        if child is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        child.returncode = code
        if stopping:
            failed = failed or code != 0
            continue
        log.error("an ingress process exited: stopping the others", pid=pid, exit_code=code)
        failed = True
        stop(signal.SIGTERM, None)
    return 1 if failed else 0


def _end_with(parent: int) -> None:
    """In each child before it runs: SIGTERM when the parent dies, even by SIGKILL, so
    that no ingress is left holding the port without a supervisor (Linux prctl).

    A parent that died between the fork and the prctl sends nothing: the child then has
    another parent already, and ends here. (Seen: a supervisor killed as soon as its
    children existed left one serving for good.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _check_port_free(host: str, port: int) -> None:
    """CannotStart when something already listens on the port. The children bind with
    SO_REUSEPORT, which would share the port with another group that did too."""
    try:
        socket.create_server((host, port)).close()
    except OSError as error:
        raise CannotStart(why_not_listening(error, host, port)) from None
