"""The PROXY protocol at the asyncio edge: who the client is behind HAProxy (DESIGN.md §10).

A connection from a peer listed in ``[proxy] trusted`` must start with a PROXY v1 or v2 header
(parsed by the sans-IO :mod:`letterbird.proto.proxy`); the client and local addresses it names
replace the socket's in :class:`~letterbird.server.app.ConnectionInfo`, so logs, per-address
limits, rDNS, ``Received:`` headers and "plaintext AUTH on loopback" all see the real client.
Connections from any other peer are never searched for a header (the specification forbids
guessing). A trusted peer that sends no valid header within ``[proxy] timeout`` is disconnected
without a reply. The reader never consumes a byte past the header, so the protocol handler gets
the client's own bytes untouched.

An implicit-TLS listener (``submissions``, ``imaps``, ``pop3s``) behind a proxy receives the
PROXY header before the TLS ClientHello, so its socket must be listening in plain TCP: then
:func:`accept_proxy` reads the header (trusted peers) and starts TLS itself, for every peer
(:func:`start_tls_after_header` hands a ClientHello that arrived with the header to the TLS
layer). A listener that already did its handshake (the supervisor still starts implicit-TLS
listeners with TLS on) cannot have received a header, so none is expected there and its client
address stays the socket's.

Listeners served by an :class:`asyncio.Protocol` rather than streams (the webmail: uvicorn's
HTTP protocol, see :mod:`letterbird.server.http_listener`) get the same rules from
:class:`ProxyGate`: it is the connection's protocol only until the header is read, then hands the
transport (and any bytes that followed the header) to the real protocol, behind a TLS layer on
``https``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import TYPE_CHECKING

from letterbird.logs import event
from letterbird.proto.proxy import NEED_DATA, ProxyError, ProxyHeader, ProxyHeaderReader

if TYPE_CHECKING:
    from letterbird.config import ProxySettings
    from letterbird.server.app import App, ConnectionInfo, ProtocolSpec

__all__ = ["ProxyGate", "ProxyRejected", "accept_proxy", "is_trusted", "read_proxy_header"]

log = logging.getLogger("letterbird.proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyRejected(ConnectionError):
    """A trusted peer sent no valid PROXY header: the connection is closed without a reply."""


@functools.lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def is_trusted(host: str, trusted: tuple[str, ...] | list[str]) -> bool:
    """Whether ``host`` (a socket peer address) is one of the trusted proxies."""
    if not trusted:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(addr in net for net in _networks(tuple(trusted)))


async def read_proxy_header(
    reader: asyncio.StreamReader, timeout: float, max_length: int = 4096
) -> ProxyHeader:
    """Read exactly one PROXY header; ProxyRejected when it is missing, invalid or too slow."""
    parser = ProxyHeaderReader(max_v2_length=max_length)
    try:
        async with asyncio.timeout(timeout):
            while True:
                ev = parser.next_event()
                if ev is NEED_DATA:
                    data = await reader.read(parser.bytes_wanted)
                    if not data:
                        raise ProxyRejected("connection closed before a PROXY header")
                    parser.receive_data(data)
                elif isinstance(ev, ProxyError):
                    raise ProxyRejected(ev.reason)
                else:
                    assert isinstance(ev, ProxyHeader)
                    return ev
    except TimeoutError:
        raise ProxyRejected(f"no PROXY header within {timeout:g}s") from None


async def accept_proxy(
    app: App,
    spec: ProtocolSpec,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    info: ConnectionInfo,
) -> ConnectionInfo:
    """The connection's info as the PROXY header tells it (unchanged for untrusted peers); on
    an implicit-TLS protocol whose socket is still plain, the TLS handshake follows."""
    settings = app.config.proxy
    plain = writer.get_extra_info("ssl_object") is None
    # A listener that completed its TLS handshake before we could read cannot have received a
    # header (it would have broken the handshake): the proxy passes that port through as is.
    if is_trusted(info.peer_host, settings.trusted) and (plain or not spec.implicit_tls):
        try:
            header = await read_proxy_header(reader, settings.timeout)
        except ProxyRejected as exc:
            event(
                log,
                "proxy.rejected",
                level=logging.WARNING,
                protocol=spec.key,
                proxy=info.peer_host,
                reason=exc,
            )
            raise
        if header.source is not None:
            info = dataclasses.replace(info, peer_host=header.source[0], peer_port=header.source[1])
        if header.destination is not None:
            info = dataclasses.replace(
                info, local_host=header.destination[0], local_port=header.destination[1]
            )
    if spec.implicit_tls and plain:
        try:
            await start_tls_after_header(reader, writer, app.tls.context, TLS_HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            event(
                log,
                "proxy.tls_failed",
                level=logging.WARNING,
                protocol=spec.key,
                client=info.peer_host,
                reason=f"TLS handshake failed: {exc}",
            )
            raise ProxyRejected(f"TLS handshake failed: {exc}") from exc
    return info


TLS_HANDSHAKE_TIMEOUT = 30.0


async def start_tls_after_header(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    timeout: float,
) -> None:
    """Server-side TLS on a connection whose ClientHello may already be buffered.

    A proxy forwards the client's first TLS bytes right behind the PROXY header, so the stream
    may have read them already; ``StreamWriter.start_tls`` would leave them in the reader and
    wait for a ClientHello that never comes. They are handed to the TLS layer instead, once
    ``loop.start_tls`` has installed it and before the socket is read again.
    """
    buffer = getattr(reader, "_buffer", None)
    early = bytes(buffer) if isinstance(buffer, bytearray) else b""
    if not early:
        await asyncio.wait_for(writer.start_tls(context), timeout)
        return
    assert isinstance(buffer, bytearray)
    buffer.clear()
    loop = asyncio.get_running_loop()
    transport = writer.transport
    protocol = transport.get_protocol()
    upgrade = asyncio.ensure_future(
        loop.start_tls(
            transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
        )
    )
    # One loop turn: start_tls has swapped in its TLS protocol and scheduled connection_made
    # and resume_reading; our feed is scheduled after both, before the next socket read.
    await asyncio.sleep(0)

    def feed() -> None:
        tls = transport.get_protocol()
        if tls is protocol or upgrade.done():
            return
        _feed(tls, early)

    loop.call_soon(feed)
    new_transport = await upgrade
    # What StreamWriter.start_tls does after its own upgrade.
    writer._transport = new_transport  # type: ignore[attr-defined]
    protocol._replace_writer(writer)  # type: ignore[attr-defined]


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Give ``protocol`` bytes as if its transport had just read them."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)


class ProxyGate(asyncio.Protocol):
    """The PROXY header for a listener served by an :class:`asyncio.Protocol` (uvicorn's HTTP).

    One gate per accepted connection, with the rules of :func:`accept_proxy`: a peer in
    ``settings.trusted`` must send a valid header within ``settings.timeout``, or it is closed
    without a reply (``proxy.rejected`` is logged); any other peer is handed over at once, no
    byte read. ``make_protocol(header)`` builds the real protocol (``header`` is None for an
    untrusted peer); the gate installs it on the transport, calls its ``connection_made`` and
    passes it the bytes that came after the header, so the gate is out of the data path from
    then on.

    ``tls`` (``https``): the socket listens in plain TCP, the header comes before the TLS
    handshake, and the gate puts a server-side TLS layer between the transport and the real
    protocol for every peer, as ``loop.create_server(ssl=...)`` would. That layer is built here
    (``asyncio.sslproto.SSLProtocol`` with ``call_connection_made=True``, what the loop's own TLS
    servers use) rather than with ``loop.start_tls``: ``start_tls`` never calls the protocol's
    ``connection_made`` and may deliver the first request before its caller could, and it
    cannot be given a ClientHello that arrived in the same packet as the header.

    ``closing()`` true (the server is stopping): a connection whose header arrives is closed
    instead of being handed to a server that is shutting down.
    """

    def __init__(
        self,
        make_protocol: Callable[[ProxyHeader | None], asyncio.Protocol],
        *,
        key: str,
        settings: ProxySettings,
        tls: ssl.SSLContext | None = None,
        closing: Callable[[], bool] | None = None,
        max_length: int = 4096,
    ) -> None:
        self._make_protocol = make_protocol
        self._key = key
        self._trusted = tuple(settings.trusted)
        self._timeout = settings.timeout
        self._tls = tls
        self._closing = closing
        self._max_length = max_length
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._client = "?"
        self._parser: ProxyHeaderReader | None = None  # set while waiting for the header
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple | list) and peer:
            self._peer = self._client = str(peer[0])
        if not is_trusted(self._peer, self._trusted):
            self._hand_over(None, b"")
            return
        self._parser = ProxyHeaderReader(max_v2_length=self._max_length)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._timed_out)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # pragma: no cover - rejected, no more reads are delivered
            return
        parser.receive_data(data)
        ev = parser.next_event()
        if ev is NEED_DATA:
            return
        if isinstance(ev, ProxyError):
            self._reject(ev.reason)
            return
        assert isinstance(ev, ProxyHeader)
        self._done_waiting()
        if ev.source is not None:
            self._client = ev.source[0]
        self._hand_over(ev, parser.trailing_data)

    def eof_received(self) -> bool | None:
        if self._parser is not None:
            self._reject("connection closed before a PROXY header")
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._parser is not None:
            self._reject("connection closed before a PROXY header")

    # -- internals -------------------------------------------------------------------------
    def _done_waiting(self) -> None:
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._parser is not None:
            self._reject(f"no PROXY header within {self._timeout:g}s")

    def _reject(self, reason: str) -> None:
        self._done_waiting()
        event(
            log,
            "proxy.rejected",
            level=logging.WARNING,
            protocol=self._key,
            proxy=self._peer,
            reason=reason,
        )
        if self._transport is not None:
            self._transport.close()

    def _hand_over(self, header: ProxyHeader | None, early: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._closing is not None and self._closing():
            transport.close()
            return
        protocol = self._make_protocol(header)
        if self._tls is None:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            if early and not transport.is_closing():
                _feed(protocol, early)
            return
        loop = asyncio.get_running_loop()
        handshake: asyncio.Future[None] = loop.create_future()
        handshake.add_done_callback(self._handshake_done)
        tls = sslproto.SSLProtocol(
            loop,
            protocol,
            self._tls,
            handshake,
            server_side=True,
            call_connection_made=True,
            ssl_handshake_timeout=int(TLS_HANDSHAKE_TIMEOUT),
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        if early:
            _feed(tls, early)  # a ClientHello sent in the same packet as the header

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        exc = None if handshake.cancelled() else handshake.exception()
        if exc is not None:
            event(
                log,
                "proxy.tls_failed",
                level=logging.WARNING,
                protocol=self._key,
                client=self._client,
                reason=f"TLS handshake failed: {exc}",
            )
