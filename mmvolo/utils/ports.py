"""A free TCP port for a launcher's rendezvous (``MASTER_PORT`` / ``PORT``)."""
from __future__ import annotations

import socket


def free_port(host: str = '127.0.0.1') -> int:
    """A port on ``host`` that nothing listens on now (the OS picks it; another process may
    still take it before the launcher binds it, so use it at once)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
