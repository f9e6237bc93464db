"""The webmail: read, send and organise mail in a browser (Starlette + Jinja2 + htmx), served
by uvicorn inside ``letterbird serve`` on the ``[listen] http``/``https`` addresses.

Modules: :mod:`~letterbird.http.app` (the ASGI application), :mod:`~letterbird.http.server`
(the uvicorn listeners), :mod:`~letterbird.http.web` (sessions, CSRF, rendering, headers),
:mod:`~letterbird.http.views` (folders, lists, messages, actions), :mod:`~letterbird.http.compose`
and :mod:`~letterbird.http.outgoing` (writing and sending), :mod:`~letterbird.http.events`
(live updates), :mod:`~letterbird.http.sanitize` (HTML mail made inert),
:mod:`~letterbird.http.mailview` (body parts and attachments), :mod:`~letterbird.http.listing`
(date order, counts, search), :mod:`~letterbird.http.sessions` (cookies, tokens, signed links).
"""
