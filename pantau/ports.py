"""Listening ports: a port that is taken is one clear line, naming the port, the setting that moves
it and, where /proc can tell, the process that holds it."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path

from pantau.errors import PortInUse

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def holder(port: int) -> str | None:
    """'pid N (command line)' of the process listening on `port`, when this process may see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"pid {proc.name} ({command[:80]})"
    return None


def port_in_use(port: int, host: str, setting: str) -> PortInUse:
    """The error for a port someone else listens on."""
    who = holder(port)
    held = f" by {who}" if who else ""
    return PortInUse(
        f"port {port} on {host} is taken{held}: set {setting} to another port, or to 0 for a free one"
    )


def ensure_free(port: int, host: str, setting: str) -> None:
    """Raise PortInUse now if `port` cannot be listened on (0 always can)."""
    if port <= 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise port_in_use(port, host, setting) from None
            raise
