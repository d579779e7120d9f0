"""Running the web app: uvicorn in a thread of this process (``shortlist serve --web-port`` and
``shortlist web`` both wait for a signal in the main thread), the listen rule, and the channel factories.

Listen rule: the one of ``serve`` (agent.security.check_exposure): an address other machines can reach
needs HTTPS and authentication (the agent requires tokens, and the app has no default token that would
let anyone in), or an explicit --insecure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from fastapi import FastAPI

from agent import client
from agent.fds import throttle_accept_failures
from agent.security import check_exposure, listen_socket
from agent.web.config import WebConfig
from shortlist.manifest import pid_alive

log = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); OSError saying what to change."""
    sock = listen_socket(host, port, "the web app", "--web-port / --port or host")
    sock.set_inheritable(True)
    return sock


def check_listen(config: WebConfig, agent_requires_tokens: bool, tls_flags: str, auth_flags: str,
                 host_flag: str = "--host") -> list[str]:
    """The exposure rule for the app's address (SecurityError when refused; warnings for --insecure);
    ``host_flag`` names the option that set it (``serve``: --web-host; ``web``: --host)."""
    authenticated = agent_requires_tokens and not config.default_token
    return check_exposure(config.host, tls=config.https, authenticated=authenticated, insecure=config.insecure,
                          tls_flags=tls_flags, auth_flags=auth_flags,
                          what="serve the web app", host_flag=host_flag)


# Limits on the connections the app holds open, so slow or idle clients cannot use up the file descriptors
# this process shares with the gRPC agent (the security review: 1,100 half-sent requests did, with a 1024
# limit). uvicorn closes a keep-alive connection idle for 5 s but nothing else: a client that sends its
# request headers one byte at a time, or half of them and then nothing, kept a connection for minutes.
HEADER_TIMEOUT_S = 10.0  # from the connection (or the previous response) to the end of the request's headers
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # asyncio's default is 60 s
MAX_CONNECTIONS = 256  # open at once; one more evicts the oldest still waiting for its headers, else gets 503


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with what uvicorn lacks: a connection must have sent its request line and headers
    within ``header_timeout_s`` of being accepted or of its previous response (else it is closed), and at most
    ``max_connections`` are open at once: one more closes the oldest connection still waiting for its headers
    (a slow or idle client's), or, when every open connection is busy with a request, is answered 503 and
    closed."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None
        waiting_since: float | None = None  # monotonic time the headers were first awaited; None: not waiting

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            full = len(self.connections) >= max_connections
            super().connection_made(transport)
            if full and not self._evict_one():
                log.debug("web app: %d connections open, refusing one more", max_connections)
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                b"content-length: 40\r\nconnection: close\r\n\r\n"
                                b"Too many connections: try again shortly\n")
                transport.close()
                return
            self._await_headers()

        def _evict_one(self) -> bool:
            waiting = [c for c in self.connections if isinstance(c, GuardedH11Protocol) and c is not self
                       and c.waiting_since is not None]
            if not waiting:
                return False
            min(waiting, key=lambda c: c.waiting_since or 0.0).close_waiting()
            return True

        def _await_headers(self) -> None:
            self._stop_waiting()
            self.waiting_since = time.monotonic()
            self.header_deadline = self.loop.call_later(header_timeout_s, self.close_waiting)

        def _stop_waiting(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
            self.header_deadline = self.waiting_since = None

        def close_waiting(self) -> None:
            """Closes a connection whose request headers have not all come (the timeout, or an eviction)."""
            self._stop_waiting()
            if not self.transport.is_closing():
                self.transport.abort()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._stop_waiting()  # a request's headers are in: the app reads the body and answers

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._await_headers()  # keep-alive: the next request's headers have the same time

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

    return GuardedH11Protocol


class _Server(uvicorn.Server):
    """uvicorn.Server whose TLS handshakes time out after ``tls_handshake_timeout_s`` (uvicorn does not pass
    asyncio's ssl_handshake_timeout, 60 s by default, through)."""

    def __init__(self, config: uvicorn.Config, tls_handshake_timeout_s: float) -> None:
        super().__init__(config)
        self.tls_handshake_timeout_s = tls_handshake_timeout_s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        create_server = loop.create_server

        async def with_handshake_timeout(*args: Any, **kwargs: Any) -> asyncio.Server:
            if kwargs.get("ssl") is not None:
                kwargs["ssl_handshake_timeout"] = self.tls_handshake_timeout_s
            return await create_server(*args, **kwargs)

        loop.create_server = with_handshake_timeout  # type: ignore[method-assign]
        try:
            await super().startup(sockets)
        finally:
            del loop.create_server  # type: ignore[method-assign]


class WebServer:
    """uvicorn serving ``app`` from a thread; ``start`` returns once it accepts connections. The connection
    limits (HEADER_TIMEOUT_S, MAX_CONNECTIONS, TLS_HANDSHAKE_TIMEOUT_S; tests make them short) are in
    guarded_protocol and _Server. ``on_listening`` runs just before the port is bound and listens (here, in
    the constructor: the kernel completes connections from then on, before uvicorn accepts them): `shortlist
    web` arms its signal handlers there, as `shortlist serve` does through create_server's ``on_listening``."""

    def __init__(self, app: FastAPI, config: WebConfig, *, header_timeout_s: float = HEADER_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS,
                 tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S,
                 on_listening: Callable[[], None] | None = None) -> None:
        self.config = config
        if on_listening is not None:
            on_listening()
        self.sock = bind(config.host, config.port)
        self.port: int = self.sock.getsockname()[1]
        ssl = {} if config.https_cert is None else {"ssl_certfile": str(config.https_cert),
                                                     "ssl_keyfile": str(config.https_key)}
        throttle_accept_failures()  # asyncio's line per failed accept: one every 10 s (agent/fds.py)
        # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For/-Proto from loopback peers (its
        # default FORWARDED_ALLOW_IPS), and a local user, SSH tunnel or port-forward could choose the browser
        # address the app logs and passes to the agent (agent.web.auth.client_address) and the scheme.
        # limit_concurrency: uvicorn answers 503 once that many requests are in the app (connections never
        # reach it: guarded_protocol caps them below); h11_max_incomplete_event_size: request line + headers
        # at most 16 KiB (uvicorn's default, said here); timeout_keep_alive: an idle kept-alive connection
        # closes after 5 s.
        self.server = _Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                                             timeout_graceful_shutdown=5, proxy_headers=False,
                                             forwarded_allow_ips="", ws="none",
                                             http=guarded_protocol(header_timeout_s, max_connections),
                                             limit_concurrency=max_connections + 1, timeout_keep_alive=5,
                                             h11_max_incomplete_event_size=16 * 1024, backlog=128,
                                             **ssl),  # type: ignore[arg-type]
                              tls_handshake_timeout_s)
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # uvicorn exits with SystemExit on a bad TLS file, for instance
            self.error = e

    @property
    def url(self) -> str:
        """Where a browser opens the app: on a wildcard address (0.0.0.0, ::) the HTTPS certificate's first
        name (the one a browser can verify), else the machine's name, which the Host check allows
        (agent.web.guards.allowed_hosts), not the wildcard, which it refuses."""
        from agent.web.guards import certificate_names

        host = self.config.host
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host.strip("[]")).is_unspecified:
                named = [n for n in certificate_names(self.config.https_cert) if "*" not in n] \
                    if self.config.https_cert is not None else []
                host = named[0] if named else socket.getfqdn() or socket.gethostname()
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{'https' if self.config.https else 'http'}://{host}:{self.port}"

    def start(self) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the web app did not start on {self.url}"
                              + (f" ({type(self.error).__name__}: {self.error})" if self.error else ""))
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.sock.close()


# The app's one channel lives as long as the app: after the agent was away, pages should work again within
# a second or two of its return, not after gRPC's default reconnect backoff (up to 120 s; ~26 s was seen).
RECONNECT_BACKOFF_MS = 1000


PID_FILE = "pid"  # in a LocalSocket folder: the process that made it, which holds an flock on it while it lives


def _take_lock(fd: int) -> bool:
    """Take ``fd``'s exclusive flock without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_stale_sockets(tmp: Path | None = None) -> list[Path]:
    """Remove the LocalSocket folders (``shortlist-web-*`` in the temporary folder, this user's) whose
    process is gone: a ``serve --web-port`` killed by SIGKILL (or a crash) cannot remove its own.

    The living process holds an flock on its pid file (``LocalSocket``), so a folder is removed only when
    that lock can be taken, which the kernel decides whatever pid namespace either process is in (a pid
    from another namespace looks gone to ``kill``), and when its pid is not a process we see either (older
    versions took no lock; a number beyond any pid is no process). A folder without a pid (none yet, none
    written by an older version, or a file that holds no number) is left alone, as are symlinks and other
    users' folders. The folders removed."""
    tmp = Path(tempfile.gettempdir()) if tmp is None else tmp
    removed = []
    for folder in tmp.glob("shortlist-web-*"):
        try:
            if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
                continue
            fd = os.open(folder / PID_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if not _take_lock(fd):
                continue  # a living process holds it
            try:
                pid = int(os.read(fd, 64).decode("ascii").strip())
            except (OSError, ValueError):  # ValueError: empty (being written), not a number, not ASCII
                continue
            # a hint only: liveness is the pid file's lock (``_locked``); this keeps the folders of older
            # versions, which took no lock
            if pid > 0 and not pid_alive(pid):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
                log.info("removed %s, the local socket folder of process %d, which is gone", folder, pid)
        except OSError as e:
            log.debug("could not check %s: %s", folder, e)
        finally:
            os.close(fd)
    return removed


class LocalSocket:
    """A Unix socket path in a fresh folder only this user can enter (mkdtemp: 0700), for the agent's
    plaintext port that the in-process web app uses; removed by ``cleanup``. The folder holds the process's
    pid (``PID_FILE``), locked (flock) for as long as this object lives, so a later start removes it when the
    process was killed without cleaning up, and never while it lives (``remove_stale_sockets``, called here
    first)."""

    def __init__(self) -> None:
        remove_stale_sockets()
        self.folder = Path(tempfile.mkdtemp(prefix="shortlist-web-"))
        os.chmod(self.folder, 0o700)
        # locked before the pid is written: a cleaner sees no file, an empty one, or a locked one
        self._lock = os.open(self.folder / PID_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        os.write(self._lock, f"{os.getpid()}\n".encode())
        self.path = str(self.folder / "agent.sock")

    def factory(self, timeout: float = client.CONNECT_TIMEOUT_S) -> Callable[[], grpc.Channel]:
        # No busy retries in the app: a refusal goes to the browser as 429 with the agent's hint as Retry-After.
        return lambda: client.channel(f"unix:{self.path}", timeout=timeout,
                                      config=client.ClientConfig(busy_retry=client.BusyRetry.OFF),
                                      max_reconnect_backoff_ms=RECONNECT_BACKOFF_MS)

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock >= 0:
            os.close(self._lock)  # after the removal: the folder is never unlocked while it exists
            self._lock = -1


def remote_factory(address: str, config: client.ClientConfig) -> Callable[[], grpc.Channel]:
    """Channels to an agent elsewhere, with ``config``'s TLS but no token (each call carries its caller's) and
    no busy retries (a refusal goes to the browser as 429 with the agent's hint as Retry-After)."""
    bare = replace(config, token="", busy_retry=client.BusyRetry.OFF)
    return lambda: client.channel(address, config=bare, max_reconnect_backoff_ms=RECONNECT_BACKOFF_MS)
