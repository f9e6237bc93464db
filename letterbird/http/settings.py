"""Settings of the webmail, with defaults.

All come from the server configuration: ``[web]`` (page size, session lifetime, live-update
streams, …), ``[limits] http_upload_size`` (a request body) and the SMTP limits (what Send
accepts). The defaults here are the configuration's, for code that builds settings directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from letterbird.config import Config

__all__ = ["WebSettings"]


@dataclass(frozen=True, slots=True)
class WebSettings:
    page_size: int = 50  # messages per list page
    session_lifetime: float = 24 * 3600.0  # seconds a login stays valid (absolute)
    upload_size: int = 26214400  # bytes of one request body (compose with attachments)
    message_size: int = 52428800  # bytes of a message Send or Save builds
    max_recipients: int = 100
    max_attachments: int = 50
    text_display_bytes: int = 2 * 1024 * 1024  # of one text part shown (the rest is cut)
    index_mailboxes: int = 64  # folders whose date order is kept in memory
    search_results: int = 1000  # matches a folder search keeps
    events_per_account: int = 16  # live-update streams open at once per account
    heartbeat: float = 20.0  # seconds between keep-alive comments on a live-update stream
    cid_token_lifetime: float = 3600.0  # seconds an inline-image link stays valid

    @classmethod
    def from_config(cls, config: Config) -> WebSettings:
        limits = config.limits
        web = config.web
        return cls(
            page_size=web.page_size,
            session_lifetime=web.session_lifetime,
            max_attachments=web.max_attachments,
            text_display_bytes=web.text_display_bytes,
            index_mailboxes=web.index_mailboxes,
            search_results=web.search_results,
            events_per_account=web.events_per_account,
            heartbeat=web.heartbeat,
            cid_token_lifetime=web.cid_token_lifetime,
            upload_size=limits.http_upload_size,
            message_size=limits.smtp_message_size,
            max_recipients=limits.smtp_recipients,
        )
