"""Serving the webmail from ``letterbird serve``: uvicorn in the same event loop as the mail
listeners, one uvicorn server per ``[listen] http``/``https`` address.

We bind the sockets ourselves (so a taken port is a clear start-up error and port 0 reports the
bound port) and hand them to uvicorn. ``https`` uses the shared
:attr:`letterbird.server.tls.TlsManager.context`, so SIGHUP's certificate reload covers the web
too. uvicorn's own signal handling is switched off: the supervisor owns SIGTERM/SIGINT and
stops us through the service's ``aclose()``. With ``[proxy] trusted`` set, uvicorn's protocol
sits behind a PROXY-protocol gate (:mod:`letterbird.server.http_listener`), which also does
``https``'s TLS after the header.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette

from letterbird.http.app import create_app
from letterbird.server.app import App

log = logging.getLogger("letterbird.http")

__all__ = ["HttpService", "start_listener"]

SERVICE_KEY = "http"
SHUTDOWN_TIMEOUT = 5.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the supervisor handles signals
        yield


@dataclass
class _Listener:
    server: _Server
    sock: socket.socket
    task: asyncio.Task[None]


@dataclass
class HttpService:
    app: App
    asgi: Starlette | None = None
    listeners: list[_Listener] = field(default_factory=list)

    def asgi_app(self) -> Starlette:
        if self.asgi is None:
            self.asgi = create_app(self.app)
        return self.asgi

    async def listen(
        self, key: str, host: str, port: int, sock: socket.socket | None = None
    ) -> list[tuple[str, int]]:
        """Serve on ``host:port``, or on the listening socket ``sock`` (a worker's)."""
        # the session secret shared by every node: made or read now, so a damaged one stops
        # the start rather than the first login
        await self.asgi_app().state.web.sessions.start()
        if sock is None:
            sock = _bind(host, port)
        ssl_factory: Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]
        ssl_factory = lambda _cfg, _default: self.app.tls.context  # noqa: E731
        http: type[asyncio.Protocol] | str = "auto"
        uvicorn_tls = key == "https"
        if self.app.config.proxy.trusted:  # the PROXY header comes first, then any TLS
            from letterbird.server.http_listener import proxied_protocol_class

            http = proxied_protocol_class(
                self.app, key, self.app.tls.context if uvicorn_tls else None
            )
            uvicorn_tls = False
        config = uvicorn.Config(
            self.asgi_app(),
            http=http,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=True,  # X-Forwarded-* honoured from loopback proxies only
            timeout_graceful_shutdown=int(SHUTDOWN_TIMEOUT),
            ssl_context_factory=ssl_factory if uvicorn_tls else None,
            ssl_certfile=str(self.app.tls.cert_path) if uvicorn_tls else None,
        )
        config.load()
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"uvicorn-{key}")
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise OSError(f"the {key} server stopped while starting")
        self.listeners.append(_Listener(server, sock, task))
        name = sock.getsockname()
        return [(str(name[0]), int(name[1]))]

    def stop_soon(self) -> None:
        for listener in self.listeners:
            listener.server.should_exit = True

    async def aclose(self) -> None:
        self.stop_soon()
        for listener in self.listeners:
            try:
                await asyncio.wait_for(asyncio.shield(listener.task), SHUTDOWN_TIMEOUT + 2)
            except TimeoutError:
                listener.server.force_exit = True
                listener.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener.task
            except Exception as exc:  # a crashed server must not block shutdown
                log.warning("http server stopped with an error: %s", exc)
        self.listeners.clear()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def start_listener(
    app: App, key: str, host: str, port: int, sock: socket.socket | None = None
) -> list[tuple[str, int]]:
    """The supervisor's hook (``SERVICE_LISTENERS``): serve the webmail on ``host:port``."""
    service = app.services.get(SERVICE_KEY)
    if not isinstance(service, HttpService):
        service = HttpService(app)
        app.services[SERVICE_KEY] = service
        app.stop_callbacks.add(service.stop_soon)
    return await service.listen(key, host, port, sock)
