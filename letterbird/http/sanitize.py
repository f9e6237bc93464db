"""Making HTML mail safe to show, and plain text showable as HTML.

HTML mail is hostile input. Three layers keep it inert:

1. **nh3** (the Rust ``ammonia`` sanitiser) with a strict allow-list of presentational tags and
   attributes. Scripts, styles, SVG, MathML, forms, frames, ``<meta>``/``<link>``/``<base>`` and
   every event handler are removed; the ``style`` attribute keeps only a list of harmless
   properties and is dropped whole if it mentions ``url(``, ``expression``, ``@import``, CSS
   escapes or bindings; links keep ``http``/``https``/``mailto`` targets only and get
   ``rel="noopener noreferrer" target="_blank"``; relative URLs are removed. Image sources are
   rewritten: ``cid:`` references become signed links to the message's own parts, small
   ``data:image/*`` URIs stay, remote ``http(s)`` images are dropped and counted (kept only when
   the reader chose "load remote images" for this message).
2. The result is served from its own URL inside an ``<iframe sandbox>`` without
   ``allow-scripts`` and without ``allow-same-origin`` (an opaque origin: no cookies, no access
   to the page).
3. That frame's response carries a CSP of ``default-src 'none'`` with images limited to
   ``data:`` and the signed inline-image route (:func:`frame_csp`), so even markup that slipped
   through cannot run script or load anything remote.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

import nh3

__all__ = ["SanitizedHtml", "frame_csp", "frame_document", "sanitize_html", "text_to_html"]

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "bdi", "bdo", "big", "blockquote", "br", "caption", "center", "cite",
        "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em",
        "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
        "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp",
        "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td",
        "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var", "wbr",
    }
)  # fmt: skip

# Removed together with everything inside them.
DROPPED_WITH_CONTENT = frozenset(
    {
        "script", "style", "title", "template", "noscript", "svg", "math", "iframe", "object",
        "embed", "applet", "textarea", "select", "xmp", "noembed", "noframes", "head",
    }
)  # fmt: skip

_TABLE_CELL = {"colspan", "rowspan", "width", "height", "valign", "bgcolor", "nowrap"}
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "title", "dir", "lang", "align"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "font": {"color", "size", "face"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": _TABLE_CELL,
    "th": _TABLE_CELL,
    "tr": {"valign", "bgcolor", "height"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "ol": {"start", "type"},
    "ul": {"type"},
    "li": {"value"},
    "hr": {"width", "size", "noshade"},
}

# CSS properties kept in style attributes: text and box presentation only. No positioning (no
# overlays over the reader's own interface), no properties that take a URL.
ALLOWED_CSS = frozenset(
    {
        "color", "background-color", "font", "font-family", "font-size", "font-style",
        "font-weight", "font-variant", "text-align", "text-decoration", "text-indent",
        "text-transform", "line-height", "letter-spacing", "word-spacing", "white-space",
        "vertical-align", "direction", "margin", "margin-top", "margin-right", "margin-bottom",
        "margin-left", "padding", "padding-top", "padding-right", "padding-bottom",
        "padding-left", "border", "border-top", "border-right", "border-bottom", "border-left",
        "border-color", "border-style", "border-width", "border-collapse", "border-spacing",
        "border-radius", "width", "max-width", "min-width", "height", "max-height",
        "min-height", "list-style-type", "table-layout",
    }
)  # fmt: skip

_CSS_FORBIDDEN = re.compile(r"url\s*\(|expression|@import|\\|binding|behavior|image-set", re.I)
_DATA_IMAGE = re.compile(r"^data:image/(?:png|gif|jpeg|webp);base64,[A-Za-z0-9+/=\s]*$", re.I)
MAX_DATA_URI = 512 * 1024
_LINK_SCHEMES = ("http:", "https:", "mailto:")
_REMOTE_SCHEMES = ("http:", "https:")


@dataclass(frozen=True, slots=True)
class SanitizedHtml:
    html: str
    blocked_remote: int  # remote images removed (0 when they were allowed)


def sanitize_html(
    source: str, *, cid_url: Callable[[str], str | None], allow_remote: bool = False
) -> SanitizedHtml:
    """Clean an HTML body for the message frame.

    ``cid_url(content_id)`` maps a ``cid:`` reference (without the scheme, URL-decoded) to the
    URL serving that part, or None when the message has no such part.
    """
    blocked = 0

    def attribute_filter(element: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if attribute == "style":
            return None if _CSS_FORBIDDEN.search(value) else value
        if element == "a" and attribute == "href":
            v = value.strip()
            return v if v.lower().startswith(_LINK_SCHEMES) else None
        if element == "img" and attribute == "src":
            v = value.strip()
            low = v.lower()
            if low.startswith("cid:"):
                return cid_url(unquote(v[4:]))
            if low.startswith("data:"):
                return v if len(v) <= MAX_DATA_URI and _DATA_IMAGE.match(v) else None
            if low.startswith(_REMOTE_SCHEMES):
                if allow_remote:
                    return v
                blocked += 1
            return None
        return value

    cleaned = nh3.clean(
        source,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=attribute_filter,
        strip_comments=True,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes={"http", "https", "mailto", "cid", "data"},
        filter_style_properties=set(ALLOWED_CSS),
        url_relative="deny",
    )
    return SanitizedHtml(cleaned, blocked)


# RFC 3986 URIs in running text: the scheme, then characters up to white space or a closer.
_URL = re.compile(r"\bhttps?://[^\s<>\"'\x00-\x1f]+", re.I)
_TRAILING = ".,;:!?)]}'\""


def text_to_html(text: str) -> str:
    """Escape plain text for display and turn ``http(s)://`` URLs into safe links."""
    out: list[str] = []
    pos = 0
    for m in _URL.finditer(text):
        url = m.group(0).rstrip(_TRAILING)
        end = m.start() + len(url)
        out.append(html.escape(text[pos : m.start()]))
        href = html.escape(url, quote=True)
        out.append(f'<a href="{href}" rel="noopener noreferrer" target="_blank">{href}</a>')
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


_FRAME_STYLE = (
    "html{color-scheme:light}"
    "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;padding:12px;"
    "color:#1d1d1f;background:#fff;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}pre,.lb-text{white-space:pre-wrap;font:inherit}"
    "table{max-width:100%}"
    "blockquote{margin:0 0 0 .8em;padding-left:.8em;border-left:3px solid #ccc}"
)


def frame_document(parts: list[str]) -> str:
    """The complete document served in the message frame: our style, then the cleaned parts."""
    body = "\n<hr>\n".join(parts)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<meta name="referrer" content="no-referrer">'
        f"<style>{_FRAME_STYLE}</style></head><body>{body}</body></html>"
    )


def frame_csp(image_prefix: str, *, allow_remote: bool) -> str:
    """Content-Security-Policy of the message frame.

    ``image_prefix`` is the absolute URL prefix of the signed inline-image route (the frame's
    origin is opaque, so ``'self'`` would not name our server).
    """
    images = f"data: {image_prefix}"
    if allow_remote:
        images += " https: http:"
    return (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
        "frame-ancestors 'self'; form-action 'none'; base-uri 'none'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox"
    )
