"""The webmail listeners (``http``, ``https``) behind a trusted PROXY-protocol balancer.

uvicorn builds one protocol object per connection (``Config.http_protocol_class``, called with
``config``, ``server_state``, ``app_state`` and ``_loop``), and that object reads the ASGI
scope's ``client`` and ``server`` from the transport in ``connection_made``
(``uvicorn.protocols.utils.get_remote_addr``: the socket's ``getpeername()``). With ``[proxy]
trusted`` set, :func:`proxied_protocol_class` gives uvicorn a class to build instead: a
:class:`~letterbird.server.proxy.ProxyGate` that reads the header from trusted peers (the same
rules as the mail listeners, DESIGN.md §10) and then installs uvicorn's own protocol, whose
``connection_made`` puts the header's addresses in place of the socket's. So
``request.client`` — login throttling, ``web.login*`` log lines, uvicorn's X-Forwarded-For
check — is the client the balancer saw. Everything else (keep-alive, streaming responses,
graceful shutdown, the listening socket) stays uvicorn's.

For ``https`` the socket then listens in plain TCP, because the header comes before the TLS
handshake; the gate adds the TLS layer (the shared, SIGHUP-reloaded context) for every peer.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from letterbird.proto.proxy import ProxyHeader
from letterbird.server.app import App
from letterbird.server.proxy import ProxyGate

__all__ = ["proxied_protocol_class"]


def _carrying(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """``base`` (one of uvicorn's HTTP protocols) taking its addresses from a PROXY header."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        header: ProxyHeader = self.proxy_header
        if header.source is not None:
            self.client = header.source
        if header.destination is not None:
            self.server = header.destination

    return type(f"Proxied{base.__name__}", (base,), {"connection_made": connection_made})


def proxied_protocol_class(
    app: App, key: str, tls: ssl.SSLContext | None, http: str = "auto"
) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``Config(http=...)`` on a listener behind trusted proxies."""
    base: type[asyncio.Protocol] = import_from_string(HTTP_PROTOCOLS.get(http, http))
    carrying = _carrying(base)
    settings = app.config.proxy

    class UvicornProxyGate(ProxyGate):
        def __init__(
            self,
            config: Any,
            server_state: Any,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            def make_protocol(header: ProxyHeader | None) -> asyncio.Protocol:
                cls = base if header is None else carrying
                protocol = cls(  # type: ignore[call-arg]
                    config=config, server_state=server_state, app_state=app_state, _loop=_loop
                )
                if header is not None:
                    protocol.proxy_header = header  # type: ignore[attr-defined]
                return protocol

            super().__init__(
                make_protocol,
                key=key,
                settings=settings,
                tls=tls,
                closing=app.stopping.is_set,
            )

    return UvicornProxyGate
