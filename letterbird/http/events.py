"""Live updates: a server-sent event stream (``GET /events``, ``text/event-stream``) per open
page, fed by the storage change bus (DESIGN.md §7).

Each change to the account's folders (new message, flags, expunge, folder created/renamed/
deleted) becomes ``event: change`` with ``{"mailboxes": [ids], "kinds": [...]}``; bursts are
coalesced over a short window so a 50-recipient delivery is one refresh. The page's script
then re-fetches the folder list and the message list (htmx). A subscriber that overflowed gets
``{"resync": true}`` (refresh everything). Comments keep idle streams alive through proxies;
the stream ends when the server stops or the client goes away, and each account may hold only
a few streams at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from letterbird.http.web import User, Web
from letterbird.storage.events import ChangeEvent, Subscription

__all__ = ["routes", "stream"]

COALESCE = 0.2  # seconds


def _payload(events: list[ChangeEvent], overflowed: bool) -> str:
    data: dict[str, object]
    if overflowed:
        data = {"resync": True}
    else:
        data = {
            "mailboxes": sorted({e.mailbox_id for e in events}),
            "kinds": sorted({e.kind.value for e in events}),
        }
    return f"event: change\ndata: {json.dumps(data)}\n\n"


async def stream(
    sub: Subscription, stopping: asyncio.Event, heartbeat: float
) -> AsyncIterator[str]:
    """The event stream of one subscription until ``stopping`` is set."""
    yield "retry: 3000\n\n"
    stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    get: asyncio.Future[Any] | None = None
    try:
        while not stopping.is_set():
            if get is None:  # a wait that timed out keeps its pending get for the next round
                get = asyncio.ensure_future(sub.get())
            done, _ = await asyncio.wait(
                {get, stop}, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
            )
            if get not in done:
                if stop in done:
                    return
                yield ": keep-alive\n\n"
                continue
            events: list[ChangeEvent] = [get.result()]
            get = None
            await asyncio.sleep(COALESCE)
            events.extend(sub.drain())
            overflowed, sub.overflowed = sub.overflowed, False
            yield _payload(events, overflowed)
    finally:
        for fut in (get, stop):
            if fut is not None and not fut.done():
                fut.cancel()
        sub.close()


def routes(web: Web) -> list[Route]:
    async def events(request: Request, user: User) -> Response:
        if web.events_open.get(user.id, 0) >= web.settings.events_per_account:
            return Response(
                "Too many live-update streams.", status_code=429, headers={"Retry-After": "30"}
            )

        async def body() -> AsyncIterator[str]:
            # Subscribe only once the response streams, so a client that left before never
            # holds a subscription.
            web.events_open[user.id] = web.events_open.get(user.id, 0) + 1
            try:
                sub = web.storage.bus.subscribe(user.id)
                async for chunk in stream(sub, web.app.stopping, web.settings.heartbeat):
                    yield chunk
            finally:
                left = web.events_open.get(user.id, 1) - 1
                if left > 0:
                    web.events_open[user.id] = left
                else:
                    web.events_open.pop(user.id, None)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [Route("/events", web.page(events), methods=["GET"])]
