"""A hostile network for the fetch tests: an HTTP/1.1 proxy on 127.0.0.1 in front of a local S3 server that passes
every request through and, for the requests a :class:`Fault` matches, damages the answer: the connection cut right
after the headers or part-way through the body, one byte of the body flipped, or the answer held back for a while.
Each fault acts a bounded number of times, so every test ends; nothing listens beyond 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass
class Fault:
    """Damage the answer to requests whose request line contains ``match`` (e.g. ``"list-type=2"`` for listings,
    ``"GET /bucket/extra/big.bin"``), at most ``times`` times (``None``: every time).

    ``action``: ``"cut"`` closes the connection after the headers and ``at`` bytes of the body (0: none), ``"flip"``
    inverts the body byte at ``at``, ``"stall"`` waits ``seconds`` before the answer (then sends it whole)."""

    match: str
    action: str
    at: int = 0
    times: int | None = 1
    seconds: float = 0.0
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ("cut", "flip", "stall"):
            raise ValueError(f"action={self.action!r}: expected 'cut', 'flip' or 'stall'")


class FaultyProxy:
    """``FaultyProxy(endpoint, faults)``: point the client at ``.endpoint``; ``.requests`` lists every request line
    seen (for the tests' checks); ``close()`` stops it and closes every connection."""

    def __init__(self, endpoint: str, faults: list[Fault] | None = None, timeout: float = 30.0):
        self.upstream = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.faults, self.timeout = list(faults or []), timeout
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.open: set[socket.socket] = set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        with self.lock:
            for s in list(self.open):
                _close(s)
            self.open.clear()

    def fired(self, action: str | None = None) -> int:
        """How many answers were damaged (by ``action``, or by any)."""
        return sum(f.hits for f in self.faults if action in (None, f.action))

    # ---- plumbing

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            client.settimeout(self.timeout)
            with self.lock:
                self.open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _pick(self, line: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.match in unquote(line) and (f.times is None or f.hits < f.times):
                    f.hits += 1
                    return f
        return None

    def _serve(self, client: socket.socket) -> None:
        buf = b""
        try:
            while not self.closed:
                head, buf = _read_head(client, buf)
                if head is None:
                    return
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                with self.lock:
                    self.requests.append(line)
                body_len = _content_length(head)
                body, buf = buf[:body_len], buf[body_len:]
                while len(body) < body_len:
                    more = client.recv(1 << 16)
                    if not more:
                        return
                    body += more
                status_head, answer = self._forward(head + body, line.startswith("HEAD "))
                fault = self._pick(line)
                if fault is None:
                    client.sendall(status_head + answer)
                elif fault.action == "stall":
                    time.sleep(fault.seconds)
                    client.sendall(status_head + answer)
                elif fault.action == "flip":
                    at = min(fault.at, max(len(answer) - 1, 0))
                    damaged = bytearray(answer)
                    if damaged:
                        damaged[at] ^= 0xFF
                    client.sendall(status_head + bytes(damaged))
                else:  # cut: the headers promise the whole body, then the connection drops
                    client.sendall(status_head + answer[: fault.at])
                    return
        except OSError:
            return
        finally:
            with self.lock:
                self.open.discard(client)
            _close(client)

    def _forward(self, request: bytes, is_head: bool) -> tuple[bytes, bytes]:
        """One request to the server on its own connection; its answer as (status line and headers, body)."""
        with socket.create_connection(self.upstream, timeout=self.timeout) as up:
            up.sendall(request)
            head, rest = _read_head(up, b"")
            if head is None:
                raise OSError("the server closed the connection before answering")
            n = 0 if is_head else _content_length(head)
            while len(rest) < n:
                more = up.recv(1 << 16)
                if not more:
                    break
                rest += more
            return head, rest[:n]


def _read_head(sock: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
    """(request or status line and headers up to the blank line included, bytes after it); (None, b"") at EOF."""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(1 << 16)
        if not more:
            return None, b""
        buf += more
    end = buf.index(b"\r\n\r\n") + 4
    return buf[:end], buf[end:]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
