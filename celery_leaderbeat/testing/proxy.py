"""A loopback TCP relay that a test can cut: a network partition for some clients."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """A loopback TCP relay in front of one server, which a test can cut and restore.

    Clients connect to :attr:`port` instead of the server, so one client's
    link can be cut while others keep theirs. A cut behaves like a network
    partition, not like a stopped server: connections stay open and new ones
    are accepted, but no byte gets through in either direction, so clients
    wait for their own timeouts. :meth:`restore` resets every connection that
    lived through the cut (what was sent meanwhile is lost, never delivered
    late) and relays new ones again.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []  # accepted while cut, never connected onward
        self._is_cut = False
        self._commands: list[tuple[str, threading.Event]] = []
        self._commands_lock = threading.Lock()
        self._wake_read, self._wake_write = socket.socketpair()
        self._thread: threading.Thread | None = None

    @property
    def is_cut(self) -> bool:
        return self._is_cut

    def start(self) -> TcpProxy:
        if self._thread is None:
            self._listener.setblocking(False)
            self._selector.register(self._listener, selectors.EVENT_READ)
            self._selector.register(self._wake_read, selectors.EVENT_READ)
            self._thread = threading.Thread(
                target=self._run, name=f"tcp-proxy-{self.port}", daemon=True)
            self._thread.start()
        return self

    def cut(self) -> None:
        """Stop every byte from getting through; returns once nothing passes any more."""
        self._command("cut")

    def restore(self) -> None:
        """Reset the connections that lived through the cut and relay again."""
        self._command("restore")

    def close(self) -> None:
        if self._thread is not None:
            self._command("close")
            self._thread.join(5)
            self._thread = None
        for sock in (self._listener, self._wake_read, self._wake_write):
            sock.close()

    def _command(self, name: str) -> None:
        done = threading.Event()
        with self._commands_lock:
            self._commands.append((name, done))
        self._wake_write.send(b".")
        if not done.wait(5):
            raise TimeoutError(f"proxy on port {self.port} did not {name} within 5s")

    # -- the relay thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                sock = key.fileobj
                if sock is self._wake_read:
                    if not self._obey():
                        return
                elif sock is self._listener:
                    self._accept()
                else:
                    self._relay(sock)  # type: ignore[arg-type]

    def _obey(self) -> bool:
        """Carry out queued commands; False once told to close."""
        self._wake_read.recv(1024)
        with self._commands_lock:
            commands, self._commands = self._commands, []
        running = True
        for name, done in commands:
            if name == "cut" and not self._is_cut:
                self._is_cut = True
                for sock in self._peers:
                    self._selector.unregister(sock)
            elif name == "restore" and self._is_cut:
                self._is_cut = False
                self._drop_all()
            elif name == "close":
                self._drop_all()
                self._selector.close()
                running = False
            done.set()
        return running

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._is_cut:
            self._held.append(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()  # the server is down: the client sees its connection closed
            return
        for sock in (client, upstream):
            sock.settimeout(5)  # a peer that stops reading must not stall the relay for long
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client

    def _relay(self, sock: socket.socket) -> None:
        peer = self._peers.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for one in (sock, peer):
            if one is None:
                continue
            self._peers.pop(one, None)
            if not self._is_cut:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(one)
            one.close()

    def _drop_all(self) -> None:
        for sock in list(self._peers):
            self._drop(sock)
        for sock in self._held:
            sock.close()
        self._held = []

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
