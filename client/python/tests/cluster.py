"""What the SDK's tests start: a real `hangar-server dev` (built binary, port 0, its own data
dir, the process runtime so nothing needs Docker), a TCP relay in front of it that can cut every
connection or follow a restarted controller, and one `eventually` for every wait."""

from __future__ import annotations

import os
import pathlib
import socket
import sqlite3
import subprocess
import threading
import time
from typing import Callable, Optional, TypeVar

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
T = TypeVar("T")


def binary(name: str) -> pathlib.Path:
    path = pathlib.Path(os.environ.get("HANGAR_BIN_DIR", REPO / "target" / "debug")) / name
    if not path.exists():
        pytest.fail(f"{path} is not built; run `cargo build --workspace --bins` first (scripts/test does)")
    return path


def eventually(condition: Callable[[], T], timeout: float = 30.0, what: str = "the condition") -> T:
    """Polls ``condition`` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s (last: {result!r})")
        time.sleep(0.05)


class DevServer:
    """`hangar-server dev` on port 0 with the process runtime; ``restart()`` keeps the data dir
    (the SQLite store and the drone's journal), as a restarted controller would."""

    def __init__(self, data_dir: pathlib.Path):
        self.data_dir = data_dir
        self.process: Optional[subprocess.Popen] = None
        self.url = self.proxy_url = ""

    def start(self) -> "DevServer":
        self.process = subprocess.Popen(
            [binary("hangar-server"), "dev", "--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--data-dir", self.data_dir, "--runtime", "process"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        deadline = time.monotonic() + 60
        self.url = self.proxy_url = ""
        for line in self.process.stdout:
            words = line.split()
            if words[:1] == ["controller"]:
                self.url = words[1]
            if words[:1] == ["proxy"]:
                self.proxy_url = words[1]
            if "Stop with Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert self.url, "hangar-server dev printed no controller URL"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def restart(self) -> "DevServer":
        self.stop()
        return self.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def compact_history(self) -> int:
        """Drops the node history up to the current revision, exactly as the controller's own
        compaction does with a zero retention (`compact` in server/src/store/sql/nodes.rs); the
        store is SQLite in WAL mode, so this runs beside the live controller. Returns the new
        oldest retained revision: a watch resuming from before it gets OUT_OF_RANGE."""
        with sqlite3.connect(self.data_dir / "hangar.db", timeout=10, isolation_level=None) as db:
            db.execute("BEGIN IMMEDIATE")
            (target,) = db.execute("SELECT current FROM revision_counter WHERE id = 1").fetchone()
            db.execute("DELETE FROM node_history WHERE revision <= ? AND (change = 'REMOVED' OR revision < "
                       "(SELECT MAX(v.revision) FROM node_history v WHERE v.node_id = node_history.node_id "
                       "AND v.revision <= ?))", (target, target))
            db.execute("DELETE FROM nodes WHERE removed <> 0 AND removed <= ?", (target,))
            db.execute("UPDATE revision_counter SET compacted = ? WHERE id = 1", (target,))
            db.execute("COMMIT")
        return target


class Relay:
    """A TCP relay on 127.0.0.1:0 to ``upstream``. ``cut()`` closes every relayed connection and
    refuses new ones (accepted, then closed at once) until ``restore()``, which may point it at a
    new upstream: to a client, the controller went away and came back at the same address."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self._open = True
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stopped = False
        #: Connections relayed so far (a reconnecting client makes more than one).
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._open = False
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def restore(self, upstream: Optional[tuple[str, int]] = None) -> None:
        with self._lock:
            self.upstream = upstream or self.upstream
            self._open = True

    def close(self) -> None:
        self._stopped = True
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                open_, upstream = self._open, self.upstream
            if not open_:
                _close(client)
                continue
            try:
                server = socket.create_connection(upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets += [client, server]
                self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
