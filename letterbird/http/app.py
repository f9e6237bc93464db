"""The webmail as one ASGI application (Starlette), served by uvicorn inside ``letterbird
serve`` (:mod:`letterbird.http.server`).

Server-rendered pages (Jinja2) with htmx vendored under ``static/`` (no CDN: works offline) and
a few lines of our own JavaScript; every page works without script except live updates.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from letterbird.http import compose, events, views
from letterbird.http.settings import WebSettings
from letterbird.http.web import STATIC, BodyLimitMiddleware, SecurityHeadersMiddleware, Web
from letterbird.server.app import App
from letterbird.storage.interface import NotFound, StorageError

__all__ = ["create_app"]


def create_app(app: App, settings: WebSettings | None = None) -> Starlette:
    """The webmail for the running server's ``app`` (storage, directory, configuration)."""
    web = Web(app, settings or WebSettings.from_config(app.config))
    routes = [
        *views.routes(web),
        *compose.routes(web),
        *events.routes(web),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    asgi = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(BodyLimitMiddleware, limit=web.settings.upload_size),
        ],
        exception_handlers={
            HTTPException: web.error_page,
            NotFound: web.error_page,  # gone meanwhile (another client deleted it)
            StorageError: web.error_page,
            Exception: web.error_page,
        },
    )
    asgi.state.web = web
    return asgi
