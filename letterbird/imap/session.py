"""One IMAP4rev1 session: the command handlers above storage (RFC 3501 §6, with RFC 2177 IDLE,
2342 NAMESPACE, 2971 ID, 3348 CHILDREN, 3691 UNSELECT, 4315 UIDPLUS, 4959 SASL-IR, 5161 ENABLE,
6154 SPECIAL-USE, 6851 MOVE and 7888 LITERAL+).

The connection loop in :mod:`letterbird.server.imap` reads bytes, feeds the sans-IO
:class:`~letterbird.proto.imap.parser.CommandReader` and hands each parsed
:class:`~letterbird.proto.imap.parser.Command` to :meth:`ImapSession.handle`, which calls
storage and writes responses through an :class:`Output`. Responses are built only with
:mod:`letterbird.proto.imap.encoder` and :class:`~letterbird.proto.imap.codes.ResponseCode`
values. What the session does not decide alone it returns as an :class:`Action` (close the
connection, start TLS, enter IDLE, read a SASL line).

Semantics decided here:

* **State** (RFC 3501 §3): a command in the wrong state is ``BAD``; LOGIN/AUTHENTICATE without
  TLS are refused with ``NO [PRIVACYREQUIRED]`` (and ``LOGINDISABLED`` is advertised) unless the
  client is on loopback (DESIGN.md §10). Wrong passwords are ``NO [AUTHENTICATIONFAILED]``,
  throttled ones too (the directory delays both); AUTH=PLAIN is the only mechanism.
* **Change tracking**: at login the session subscribes to its account's change events. An
  event about the selected mailbox marks it dirty; before and after each command a dirty
  mailbox is re-read with one ``changes_since(highestmodseq)`` query (which also covers events
  lost to a subscription overflow) and fed to :class:`~letterbird.imap.selected.SelectedMailbox`,
  which owes the client EXPUNGE/EXISTS/RECENT/FETCH responses. They are sent before every
  tagged reply — except EXPUNGE during FETCH, STORE and SEARCH (RFC 3501 §7.4.1; the UID forms
  may) — and at once while in IDLE.
* **One storage query per command**: FETCH of UID and FLAGS only is served from the
  selected state (``FETCH 1:* (UID FLAGS)`` costs no query); anything else is one
  ``fetch_messages`` call for the whole set, plus one ``read_blob`` per message of just the
  byte range the items need (:func:`letterbird.imap.fetch.byte_range`), and only when they need
  bytes. The implicit ``\\Seen`` of a non-PEEK body fetch is one ``store_flags`` call and the
  new FLAGS are included in the FETCH responses. SEARCH on flag, sequence and UID keys costs
  no query; other keys one light ``fetch_meta`` query per :data:`SEARCH_BATCH` messages, plus
  ``fetch_messages`` for the structures not cached and ``read_blob`` only where the memo
  cannot stand in for the bytes. A second SELECT of the selected mailbox is one
  ``changes_since`` query, and an APPEND to it none (:meth:`SelectedMailbox.appended`). Those
  queries go first through ``changes_since_bounded`` (at most :data:`SYNC_BOUNDED` changes),
  which the SQLite backend answers inline: a resync costs no hop to a reader thread, and under
  load such a hop about doubles a command's latency (it waits for the loop twice).
* **Caches** (process-wide, keyed by blob hash, so never stale): :data:`INFO_CACHE` keeps
  structures as stored, decoded when first needed (the envelope alone for SEARCH on
  From/To/Subject), with a :class:`Memo` per message of what was derived from them: encoded
  ENVELOPE/BODY/BODYSTRUCTURE items and casefolded header values and text for SEARCH. Its
  budget (:data:`INFO_CACHE_BYTES`) counts the JSON and the memo values.
* **Expunged messages** that the client has not yet been told about (another session expunged
  them during our FETCH/STORE/SEARCH, RFC 2180 §4.1) keep their sequence numbers; FETCH of
  their flags or UID is answered from memory, anything else omits them and the command ends
  ``NO [EXPUNGEISSUED]`` (Dovecot's answer); STORE and COPY skip them the same way.
* **Sequence sets** naming a message that does not exist (above EXISTS, or ``*`` in an empty
  mailbox) are ``BAD`` for the sequence-number forms; UID forms ignore unknown UIDs.
* **APPEND** normalises line ends to CRLF (the store's single policy, DESIGN.md §4), parses the
  structure once (in a thread for large messages) and answers ``[APPENDUID]``; COPY answers
  ``[COPYUID]``; MOVE sends ``* OK [COPYUID ...]`` then the EXPUNGEs (RFC 6851 §4.3). A
  missing target mailbox is ``NO [TRYCREATE]``.
* **Mailboxes**: names are UTF-8 inside, modified UTF-7 on the wire; ``/`` is the delimiter.
  CREATE makes missing parents; DELETE/RENAME of INBOX follow RFC 3501 §6.3.4–6.3.5 (storage
  moves INBOX's messages on RENAME). LIST answers ``\\HasChildren``/``\\HasNoChildren``, the
  special-use role and ``\\Noselect`` for a parent that exists only as a hierarchy level.
* **Errors**: a storage failure is ``NO [SERVERBUG]`` (``[OVERQUOTA]`` when over quota); an
  unexpected exception in a handler is logged and answered ``NO [SERVERBUG]``, never a dropped
  connection. If the selected mailbox is deleted by another session the session says ``* BYE``
  and ends.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Final, Protocol

from letterbird.directory.service import AuthOutcome, is_loopback
from letterbird.imap import fetch, search
from letterbird.imap.selected import (
    SEEN,
    RecentTracker,
    SelectedMailbox,
    check_flags,
    storable_flags,
)
from letterbird.logs import event
from letterbird.mime import MessageInfo, parse_message
from letterbird.mime.structure import Envelope, envelope_from_json
from letterbird.proto import sasl
from letterbird.proto.imap import capabilities as caps
from letterbird.proto.imap import encoder
from letterbird.proto.imap.codes import ResponseCode
from letterbird.proto.imap.fetchatt import FetchAtt
from letterbird.proto.imap.parser import (
    AppendArgs,
    AuthenticateArgs,
    Command,
    CopyArgs,
    EnableArgs,
    ExpungeArgs,
    FetchArgs,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    RenameArgs,
    SearchArgs,
    SelectArgs,
    StatusArgs,
    StoreArgs,
)
from letterbird.proto.imap.seqset import SequenceSet
from letterbird.server.app import App, ConnectionInfo
from letterbird.storage import names
from letterbird.storage.events import ChangeEvent, ChangeKind, Subscription
from letterbird.storage.interface import (
    Account,
    AppendTarget,
    BlobSource,
    Changes,
    FlagMode,
    Mailbox,
    MailboxExists,
    MessageRecord,
    NotFound,
    QuotaExceeded,
    StorageError,
    StoreResult,
)

log = logging.getLogger("letterbird.imap")

__all__ = [
    "BASE_CAPABILITIES",
    "INFO_CACHE",
    "RECENT_SERVICE",
    "Action",
    "CachedInfo",
    "ImapSession",
    "InfoCache",
    "Memo",
    "Output",
    "State",
    "StateItems",
    "capabilities",
    "list_match",
    "normalise_line_ends",
    "recent_tracker",
]

RECENT_SERVICE: Final = "imap_recent"
"""``app.services`` key of the process-wide :class:`RecentTracker`."""

BASE_CAPABILITIES: Final = (
    caps.IMAP4REV1,
    caps.LITERAL_PLUS,
    caps.SASL_IR,
    caps.IDLE,
    caps.UIDPLUS,
    caps.MOVE,
    caps.NAMESPACE,
    caps.ENABLE,
    caps.SPECIAL_USE,
    caps.UNSELECT,
    caps.CHILDREN,
    caps.ID,
)
"""What every state advertises; each one has end-to-end tests."""

SERVER_ID: Final = {"name": "Letterbird", "vendor": "Letterbird"}
DELIMITER: Final = names.DELIMITER
PARSE_IN_THREAD: Final = 256 * 1024
"""APPENDed messages at least this large are parsed off the event loop."""

_STATE_ATTS: Final = frozenset({"UID", "FLAGS"})
_FLAG_MODES: Final = {"replace": FlagMode.REPLACE, "add": FlagMode.ADD, "remove": FlagMode.REMOVE}
_UID_ATT: Final = FetchAtt("UID")
_FLAGS_ATT: Final = FetchAtt("FLAGS")
_NO_EXPUNGE_DURING: Final = frozenset({"FETCH", "STORE", "SEARCH"})
_OWN_KINDS: Final = (ChangeKind.FLAGS, ChangeKind.EXPUNGE, ChangeKind.APPEND)
_REPLACES_VIEW: Final = frozenset({"SELECT", "EXAMINE"})  # no sync of the old view first
_LINE_ENDS: Final = re.compile(rb"\r\n|\r|\n")
_MAX_OWN: Final = 64
INFO_CACHE_BYTES: Final = 4 * 1024 * 1024
"""JSON octets of message structures, plus the values derived from them, kept in memory
(:class:`InfoCache`; a decoded structure takes a few times its JSON)."""
_WRITE_BATCH: Final = 64 * 1024
_STATE_BATCH: Final = 1024  # messages per write of a FETCH (UID FLAGS) answer
SEARCH_BATCH: Final = 1024
SYNC_BOUNDED: Final = 256
"""Changes a resync reads with the bounded (inline) query before falling back to the full one."""
"""Messages a SEARCH that needs storage evaluates per query (bounds what one query returns)."""


class Output(Protocol):
    """Where responses go; the connection buffers and applies back-pressure."""

    async def write(self, data: bytes) -> None: ...


class State(enum.Enum):
    """RFC 3501 §3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Action(enum.Enum):
    """What the connection loop must do after :meth:`ImapSession.handle`."""

    NONE = "none"
    CLOSE = "close"  # LOGOUT answered (or BYE sent): close the connection
    STARTTLS = "starttls"  # OK sent: upgrade, then call tls_started()
    IDLE = "idle"  # "+ idling" sent: wait for DONE or changes
    SASL = "sasl"  # "+" challenge sent: read one raw line, then authenticate_line()


_NA = frozenset({State.NOT_AUTHENTICATED})
_AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
_SEL = frozenset({State.SELECTED})
_ANY = frozenset({State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED})

_VALID_STATES: Final[dict[str, frozenset[State]]] = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    "STARTTLS": _NA,
    "AUTHENTICATE": _NA,
    "LOGIN": _NA,
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,
    "STATUS": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,
    "NAMESPACE": _AUTH,
    "ENABLE": _AUTH,
    "CHECK": _SEL,
    "CLOSE": _SEL,
    "EXPUNGE": _SEL,
    "SEARCH": _SEL,
    "FETCH": _SEL,
    "STORE": _SEL,
    "COPY": _SEL,
    "MOVE": _SEL,
    "UNSELECT": _SEL,
}


@dataclass(frozen=True, slots=True)
class _Done:
    """The tagged reply of a command (``status`` None: no tagged reply yet) and what next."""

    status: bytes | None
    text: str = ""
    code: ResponseCode | None = None
    action: Action = Action.NONE


_CONTINUE_IDLE = _Done(None, action=Action.IDLE)
_CONTINUE_SASL = _Done(None, action=Action.SASL)


def _ok(text: str, code: ResponseCode | None = None, action: Action = Action.NONE) -> _Done:
    return _Done(encoder.OK, text, code, action)


def _no(text: str, code: ResponseCode | None = None) -> _Done:
    return _Done(encoder.NO, text, code)


def _bad(text: str) -> _Done:
    return _Done(encoder.BAD, text)


class _MailboxGone(Exception):
    """The selected mailbox was deleted by another session."""


def capabilities(*, tls: bool, plaintext_ok: bool, authenticated: bool) -> list[str]:
    """The capability list for a connection state (RFC 3501 §6.1.1, §6.2.3)."""
    out = list(BASE_CAPABILITIES)
    if authenticated:
        return out
    if not tls:
        out.append(caps.STARTTLS)
    if plaintext_ok:
        out.append(caps.AUTH_PLAIN)
    else:
        out.append(caps.LOGINDISABLED)
    return out


def recent_tracker(app: App) -> RecentTracker:
    """The process-wide ``\\Recent`` tracker (created on first use), or the machine-wide one
    in shared memory when the server runs several worker processes."""
    if app.shared is not None:
        return app.shared.recent
    tracker = app.services.get(RECENT_SERVICE)
    if not isinstance(tracker, RecentTracker):
        tracker = RecentTracker()
        app.services[RECENT_SERVICE] = tracker
    return tracker


def normalise_line_ends(data: bytes) -> bytes:
    """Every bare LF and bare CR becomes CRLF (the store's one line-end policy)."""
    crlf = data.count(b"\r\n")
    if crlf == data.count(b"\n") and crlf == data.count(b"\r"):
        return data
    return _LINE_ENDS.sub(b"\r\n", data)


@lru_cache(maxsize=256)
def _tokens(pattern: str) -> tuple[str, ...] | None:
    """A list pattern as tokens: ``*``, ``%`` or one literal character. Runs of wildcards
    collapse (``*`` wins); None when more literal characters than any name can hold."""
    tokens: list[str] = []
    literal = 0
    for ch in pattern:
        if ch in "*%":
            if tokens and tokens[-1] in ("*", "%"):
                if ch == "*":
                    tokens[-1] = "*"
                continue
        else:
            literal += 1
        tokens.append(ch)
    return None if literal > names.MAX_NAME_LENGTH else tuple(tokens)


def list_match(pattern: str, name: str) -> bool:
    """RFC 3501 §6.3.8 list wildcards: ``*`` matches anything, ``%`` anything but ``/``.

    Hand-written rather than a regex because ``.*`` per wildcard backtracks exponentially on
    hostile patterns (``*a*a*a…b``). This is a bit-parallel NFA: bit ``i`` of ``reach`` says
    "the first ``i`` characters of ``name`` are matched"; a literal shifts the bits whose next
    character is it, ``*`` fills every position above the lowest bit, and ``%`` is an occluded
    fill (Kogge-Stone) that stops at ``/``. Cost: a few big-integer operations per pattern
    token (``%``: log2 of the name length), whatever the input.
    """
    tokens = _tokens(pattern)
    if tokens is None:
        return False
    n = len(name)
    full = (1 << (n + 1)) - 1
    masks: dict[str, int] = {}
    for i, ch in enumerate(name):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    enter = ((full >> 1) & ~masks.get(DELIMITER, 0)) << 1  # p+1 entered iff name[p] != "/"
    reach = 1
    for token in tokens:
        if token == "*":
            reach = full & ~((reach & -reach) - 1)
        elif token == "%":
            gen, pro, shift = reach, enter, 1
            while shift <= n:
                gen |= pro & (gen << shift)
                pro &= pro << shift
                shift <<= 1
            reach = gen & full
        else:
            reach = (reach & masks.get(token, 0)) << 1
        if not reach:
            return False
    return bool(reach >> n & 1)


def _list_pattern(reference: str, pattern: str) -> str:
    """The canonical pattern: reference and pattern joined, INBOX case-insensitive."""
    joined = reference + pattern
    if joined[:5].upper() == "INBOX" and (len(joined) == 5 or joined[5] in "/*%"):
        joined = "INBOX" + joined[5:]
    return joined


def _expected_flags(before: frozenset[str], mode: str, flags: frozenset[str]) -> frozenset[str]:
    if mode == "add":
        return before | flags
    if mode == "remove":
        return before - flags
    return flags


class ImapSession:
    """The command semantics of one connection (see the module docstring)."""

    def __init__(self, app: App, out: Output, info: ConnectionInfo) -> None:
        self.app = app
        self.storage = app.storage
        self.out = out
        self.info = info
        self.tls = info.implicit_tls
        self.state = State.NOT_AUTHENTICATED
        self.account: Account | None = None
        self.selected: SelectedMailbox | None = None
        self.subscription: Subscription | None = None
        self.tracker = recent_tracker(app)
        self._dirty = False
        self._own: set[tuple[ChangeKind, int, frozenset[int]]] = set()
        self._sasl_tag: str | None = None
        self._idle_tag: str | None = None
        self._loopback: bool | None = None  # the client address is loopback (computed once)

    # -- public API for the connection loop ------------------------------------------------

    @property
    def plaintext_ok(self) -> bool:
        """Whether LOGIN / AUTH=PLAIN may be used now."""
        if self.tls:
            return True
        if self._loopback is None:
            self._loopback = is_loopback(self.info.peer_host)
        return self._loopback

    @property
    def authenticated(self) -> bool:
        return self.state in (State.AUTHENTICATED, State.SELECTED)

    def capabilities(self) -> list[str]:
        return capabilities(
            tls=self.tls, plaintext_ok=self.plaintext_ok, authenticated=self.authenticated
        )

    def greeting(self) -> bytes:
        """``* OK [CAPABILITY ...] ...`` (RFC 3501 §7.1.1)."""
        return encoder.untagged(
            encoder.OK,
            "Letterbird IMAP4rev1 server ready",
            ResponseCode.capability(self.capabilities()),
        )

    def tls_started(self) -> None:
        """The connection finished its STARTTLS handshake."""
        self.tls = True

    async def handle(self, cmd: Command) -> Action:
        """Run one command: its responses, the updates owed, the tagged reply."""
        valid = _VALID_STATES.get(cmd.name)
        if valid is None or self.state not in valid:
            await self.out.write(
                encoder.tagged(cmd.tag, encoder.BAD, f"{cmd.name} not allowed now")
            )
            return Action.NONE
        try:
            if self.selected is not None and cmd.name not in _REPLACES_VIEW:
                await self._sync()
            done = await _HANDLERS[cmd.name](self, cmd)
            if done.status is None:
                return done.action
            if self.selected is not None and done.action is Action.NONE:
                allow = cmd.uid or cmd.name not in _NO_EXPUNGE_DURING
                await self._send_updates(expunge=allow)
        except _MailboxGone:
            return await self._mailbox_gone()
        except QuotaExceeded:
            done = _no("Over quota", ResponseCode.OVERQUOTA)
        except StorageError as exc:
            event(log, "imap.storage_error", level=logging.ERROR, command=cmd.name, error=exc)
            done = _no("Internal storage error, try again later", ResponseCode.SERVERBUG)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # a bug: answer it, keep the connection
            log.exception("imap: %s failed: %s", cmd.name, exc)
            done = _no("Internal server error", ResponseCode.SERVERBUG)
        assert done.status is not None
        await self.out.write(encoder.tagged(cmd.tag, done.status, done.text, done.code))
        return done.action

    @property
    def sasl_pending(self) -> bool:
        """An AUTHENTICATE is waiting for the client's response line."""
        return self._sasl_tag is not None

    async def authenticate_aborted(self) -> None:
        """The response line could not be read (too long): fail the AUTHENTICATE."""
        tag = self._sasl_tag
        assert tag is not None
        self._sasl_tag = None
        await self.out.write(encoder.tagged(tag, encoder.BAD, "Invalid SASL response"))

    async def authenticate_line(self, data: bytes) -> Action:
        """The client's answer to the AUTHENTICATE ``+`` challenge."""
        tag = self._sasl_tag
        assert tag is not None
        self._sasl_tag = None
        done = await self._sasl_response(data)
        assert done.status is not None
        await self.out.write(encoder.tagged(tag, done.status, done.text, done.code))
        return done.action

    async def idle_changes(self, change: ChangeEvent | None = None) -> Action:
        """While idling: take in ``change`` (and anything else pending) and report it now."""
        if change is not None:
            self._note(change)
        try:
            await self._sync()
        except _MailboxGone:
            return await self._mailbox_gone()
        except StorageError as exc:
            event(log, "imap.storage_error", level=logging.ERROR, command="IDLE", error=exc)
            return Action.NONE
        if self.selected is not None:
            await self.out.write(self.selected.updates(expunge=True))
        return Action.NONE

    async def idle_done(self, valid: bool) -> Action:
        """The line ending IDLE arrived (RFC 2177): ``DONE`` or something else (BAD)."""
        tag = self._idle_tag
        assert tag is not None
        self._idle_tag = None
        if not valid:
            await self.out.write(encoder.tagged(tag, encoder.BAD, "Expected DONE"))
            return Action.NONE
        action = await self.idle_changes()
        if action is not Action.NONE:
            return action
        await self.out.write(encoder.tagged(tag, encoder.OK, "IDLE terminated"))
        return Action.NONE

    async def close(self) -> None:
        """The connection ended: stop following changes."""
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        self.selected = None
        self.state = State.LOGOUT

    # -- change tracking -------------------------------------------------------------------

    def _note(self, change: ChangeEvent) -> None:
        sel = self.selected
        if sel is None or change.mailbox_id != sel.mailbox_id:
            return
        if change.kind in _OWN_KINDS:
            # Our own STORE/EXPUNGE/APPEND coming back: already applied, no query needed.
            # Events of one mailbox arrive in commit order, so any earlier change by someone
            # else has already marked the mailbox dirty.
            key = (
                change.kind,
                change.modseq if change.kind is ChangeKind.FLAGS else 0,
                frozenset(change.uids),
            )
            if key in self._own:
                self._own.discard(key)
                return
        self._dirty = True

    def _expect(self, kind: ChangeKind, uids: Iterable[int], modseq: int = 0) -> None:
        """Remember a change this session made itself, to recognise its event."""
        key = (kind, modseq, frozenset(uids))
        if key[2]:
            if len(self._own) >= _MAX_OWN:
                self._own.clear()  # never matched (e.g. lost to an overflow): forget them
            self._own.add(key)

    def _drain(self) -> None:
        sub = self.subscription
        if sub is None:
            return
        while (change := sub.get_nowait()) is not None:
            self._note(change)
        if sub.overflowed:  # events were lost: re-read from our modseq anyway
            sub.overflowed = False
            self._dirty = True

    async def _sync(self, *, force: bool = False) -> None:
        """Bring the selected state up to date with storage if something changed."""
        self._drain()
        sel = self.selected
        if sel is None or not (self._dirty or force):
            return
        self._dirty = False
        try:
            changes = await self._changes(sel.mailbox_id, sel.highestmodseq)
        except NotFound:
            raise _MailboxGone() from None
        except StorageError:
            self._dirty = True
            raise
        sel.apply_changes(changes.changed, changes.expunged, changes.highestmodseq)

    async def _changes(self, mailbox_id: int, modseq: int) -> Changes:
        """What changed after ``modseq``: the usual handful with one bounded (inline) read,
        a long list with the full query."""
        changes = await self.storage.changes_since_bounded(mailbox_id, modseq, SYNC_BOUNDED)
        if changes is None:
            changes = await self.storage.changes_since(mailbox_id, modseq)
        return changes

    async def _send_updates(self, *, expunge: bool) -> None:
        await self._sync()
        if self.selected is not None:
            data = self.selected.updates(expunge=expunge)
            if data:
                await self.out.write(data)

    async def _mailbox_gone(self) -> Action:
        self.selected = None
        self.state = State.LOGOUT
        await self.out.write(encoder.untagged(encoder.BYE, "Selected mailbox was deleted"))
        return Action.CLOSE

    # -- any state ---------------------------------------------------------------------------

    async def _capability(self, cmd: Command) -> _Done:
        await self.out.write(encoder.capability(self.capabilities()))
        return _ok("CAPABILITY completed")

    async def _noop(self, cmd: Command) -> _Done:
        """NOOP and CHECK: the updates owed are sent by :meth:`handle` (RFC 3501 §6.1.2).

        A client without IDLE polls with NOOP, so NOOP asks storage even when no event has
        arrived: a change committed just before (whose event is still being published from
        the storage thread) is reported now, not one command later."""
        if self.selected is not None:
            await self._sync(force=True)
        return _ok(f"{cmd.name} completed")

    async def _logout(self, cmd: Command) -> _Done:
        await self.out.write(encoder.untagged(encoder.BYE, "Letterbird logging out"))
        self.state = State.LOGOUT
        return _ok("LOGOUT completed", action=Action.CLOSE)

    async def _id(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, IdArgs)
        if args.params:
            fields = {k.lower(): v for k, v in args.params[:30]}
            event(
                log,
                "imap.client_id",
                client=self.info.peer_host,
                client_name=(fields.get("name") or "")[:64] or None,
                client_version=(fields.get("version") or "")[:64] or None,
            )
        await self.out.write(encoder.id_data(SERVER_ID))
        return _ok("ID completed")

    # -- not authenticated -------------------------------------------------------------------

    async def _starttls(self, cmd: Command) -> _Done:
        if self.tls:
            return _bad("TLS is already active")
        return _ok("Begin TLS negotiation now", action=Action.STARTTLS)

    async def _login_command(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, LoginArgs)
        if not self.plaintext_ok:
            return _no("Plaintext login is disabled: use STARTTLS", ResponseCode.PRIVACYREQUIRED)
        return await self._login(args.username, args.password, "LOGIN")

    async def _authenticate(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, AuthenticateArgs)
        if args.mechanism != "PLAIN":
            return _no("Unsupported authentication mechanism", ResponseCode.CANNOT)
        if not self.plaintext_ok:
            return _no(
                "Plaintext authentication is disabled: use STARTTLS", ResponseCode.PRIVACYREQUIRED
            )
        if args.initial_response is not None:
            return await self._sasl_response(args.initial_response.encode("ascii"))
        self._sasl_tag = cmd.tag
        await self.out.write(encoder.continuation_base64(b""))
        return _CONTINUE_SASL

    async def _sasl_response(self, data: bytes) -> _Done:
        try:
            creds = sasl.parse_plain(sasl.decode_base64(data))
        except sasl.SaslCancelled:
            return _bad("Authentication cancelled")
        except sasl.SaslError as exc:
            return _bad(f"Invalid SASL PLAIN response: {exc}")
        if creds.authzid and creds.authzid.casefold() != creds.username.casefold():
            event(
                log,
                "imap.auth_failed",
                client=self.info.peer_host,
                user=creds.username,
                reason="authzid",
            )
            return _no("Not authorized to act as that user", ResponseCode.AUTHORIZATIONFAILED)
        return await self._login(creds.username, creds.password, "PLAIN")

    async def _login(self, username: str, password: str, mechanism: str) -> _Done:
        client = self.info.peer_host
        try:
            result = await self.app.directory.authenticate(username, password, client)
        except StorageError as exc:
            event(log, "imap.storage_error", level=logging.ERROR, client=client, error=exc)
            return _no("Authentication is temporarily unavailable", ResponseCode.UNAVAILABLE)
        account = result.account
        if not result.ok or account is None:
            reason = "throttled" if result.outcome is AuthOutcome.THROTTLED else "failed"
            event(log, "imap.auth_failed", client=client, user=username, reason=reason)
            return _no("Authentication failed", ResponseCode.AUTHENTICATIONFAILED)
        self.account = account
        self.state = State.AUTHENTICATED
        self.subscription = self.storage.bus.subscribe(account.id)
        event(
            log,
            "imap.login",
            client=client,
            user=account.address,
            mechanism=mechanism,
            tls=self.tls,
        )
        return _ok("Logged in", ResponseCode.capability(self.capabilities()))

    # -- authenticated ----------------------------------------------------------------------

    def _account_id(self) -> int:
        assert self.account is not None
        return self.account.id

    def _deselect(self) -> None:
        self.selected = None
        self._dirty = False
        self._own.clear()
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    async def _select(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, SelectArgs)
        previous = self.selected
        self._deselect()  # RFC 3501 §6.3.1: even if the new SELECT fails
        if args.condstore or args.qresync is not None:
            return _bad("CONDSTORE and QRESYNC are not supported")
        readonly = cmd.name == "EXAMINE"
        mailbox = await self.storage.get_mailbox(self._account_id(), args.mailbox)
        if mailbox is None:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        self._drain()  # whatever happened before the read below is in it
        if previous is not None and previous.key == (mailbox.id, mailbox.uidvalidity):
            # The same mailbox again (clients re-SELECT to resynchronise): the view this
            # session holds, brought up to date, instead of reading every message again.
            try:
                changes = await self._changes(mailbox.id, previous.highestmodseq)
            except NotFound:
                return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
            previous.apply_changes(changes.changed, changes.expunged, changes.highestmodseq)
            sel = previous.reopened(mailbox.uidnext, readonly=readonly, tracker=self.tracker)
        else:
            messages = await self.storage.list_messages(mailbox.id)
            sel = SelectedMailbox(
                mailbox.id,
                mailbox.uidvalidity,
                mailbox.uidnext,
                mailbox.highestmodseq,
                messages,
                readonly=readonly,
                tracker=self.tracker,
            )
            self._dirty = len(messages) != sel.exists  # something arrived meanwhile: sync
        await self.out.write(sel.select_response())
        self.selected = sel
        self.state = State.SELECTED
        if readonly:
            return _ok("EXAMINE completed", ResponseCode.READ_ONLY)
        return _ok("SELECT completed", ResponseCode.READ_WRITE)

    async def _create(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, MailboxArgs)
        name = args.mailbox
        if name.endswith(DELIMITER):  # "foo/": a name meant to hold children (RFC 3501 §6.3.3)
            name = name.rstrip(DELIMITER)
        try:
            name = names.validate(name)
        except names.InvalidMailboxName as exc:
            return _no(f"Invalid mailbox name: {exc}", ResponseCode.CANNOT)
        account_id = self._account_id()
        if name == "INBOX" or await self.storage.get_mailbox(account_id, name) is not None:
            return _no("Mailbox already exists", ResponseCode.ALREADYEXISTS)
        await self._create_parents(account_id, name)
        try:
            await self.storage.create_mailbox(account_id, name, names.default_role(name))
        except MailboxExists:
            return _no("Mailbox already exists", ResponseCode.ALREADYEXISTS)
        return _ok("CREATE completed")

    async def _create_parents(self, account_id: int, name: str) -> None:
        """RFC 3501 §6.3.3: create the superior hierarchical names that are needed."""
        for parent in names.parents(name):
            if await self.storage.get_mailbox(account_id, parent) is None:
                try:
                    await self.storage.create_mailbox(
                        account_id, parent, names.default_role(parent)
                    )
                except MailboxExists:
                    pass

    async def _delete(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, MailboxArgs)
        name = names.normalise(args.mailbox)
        if name == "INBOX":
            return _no("INBOX cannot be deleted", ResponseCode.CANNOT)
        account_id = self._account_id()
        mailbox = await self.storage.get_mailbox(account_id, name)
        if mailbox is None:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        if self.selected is not None and self.selected.mailbox_id == mailbox.id:
            self._deselect()
        try:
            await self.storage.delete_mailbox(account_id, name)
        except NotFound:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        self.tracker.forget((mailbox.id, mailbox.uidvalidity))
        return _ok("DELETE completed")

    async def _rename(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, RenameArgs)
        old = names.normalise(args.old)
        try:
            new = names.validate(args.new.rstrip(DELIMITER) or args.new)
        except names.InvalidMailboxName as exc:
            return _no(f"Invalid mailbox name: {exc}", ResponseCode.CANNOT)
        if new == "INBOX":
            return _no("Mailbox already exists", ResponseCode.ALREADYEXISTS)
        if new == old or new.startswith(old + DELIMITER):
            return _no("Cannot rename a mailbox into itself", ResponseCode.CANNOT)
        account_id = self._account_id()
        if await self.storage.get_mailbox(account_id, old) is None:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        if await self.storage.get_mailbox(account_id, new) is not None:
            return _no("Mailbox already exists", ResponseCode.ALREADYEXISTS)
        await self._create_parents(account_id, new)
        try:
            await self.storage.rename_mailbox(account_id, old, new)
        except NotFound:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        except MailboxExists:
            return _no("Mailbox already exists", ResponseCode.ALREADYEXISTS)
        if old == "INBOX" and self.selected is not None:
            self._dirty = True  # INBOX's messages moved out
        return _ok("RENAME completed")

    async def _subscribe(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, MailboxArgs)
        subscribe = cmd.name == "SUBSCRIBE"
        try:
            await self.storage.set_subscribed(self._account_id(), args.mailbox, subscribe)
        except NotFound:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        return _ok(f"{cmd.name} completed")

    async def _list(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, ListArgs)
        if args.patterns == ("",):
            # RFC 3501 §6.3.8: the delimiter and the root of the reference.
            root = ""
            if DELIMITER in args.reference:
                root = args.reference.split(DELIMITER, 1)[0] + DELIMITER
            await self.out.write(encoder.list_data(["\\Noselect"], DELIMITER, root))
            return _ok("LIST completed")
        mailboxes = await self.storage.list_mailboxes(self._account_id())
        patterns = [_list_pattern(args.reference, p) for p in args.patterns]
        by_name = {mb.name: mb for mb in mailboxes}
        every = set(by_name)
        for name in list(by_name):
            every.update(names.parents(name))
        with_children = {p for name in every for p in names.parents(name)}
        only_subscribed = "SUBSCRIBED" in args.select_options
        only_special = "SPECIAL-USE" in args.select_options
        show_subscribed = only_subscribed or "SUBSCRIBED" in args.return_options
        lines: list[bytes] = []
        status_of: list[Mailbox] = []
        for name in sorted(every, key=lambda n: (n != "INBOX", n)):
            if not any(list_match(p, name) for p in patterns):
                continue
            mb = by_name.get(name)
            if only_subscribed and (mb is None or not mb.subscribed):
                continue
            if only_special and (mb is None or mb.role is None):
                continue
            attrs: list[str] = []
            if mb is None:
                attrs.append("\\Noselect")
            attrs.append("\\HasChildren" if name in with_children else "\\HasNoChildren")
            if mb is not None and mb.role:
                attrs.append(mb.role)
            if show_subscribed and mb is not None and mb.subscribed:
                attrs.append("\\Subscribed")
            lines.append(encoder.list_data(attrs, DELIMITER, name))
            if args.status_items is not None and mb is not None:
                status_of.append(mb)
        await self.out.write(b"".join(lines))
        for mb in status_of:
            assert args.status_items is not None
            await self.out.write(await self._status_line(mb, args.status_items))
        return _ok("LIST completed")

    async def _lsub(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, ListArgs)
        pattern = _list_pattern(args.reference, args.patterns[0])
        if pattern == "":
            await self.out.write(encoder.list_data(["\\Noselect"], DELIMITER, "", command=b"LSUB"))
            return _ok("LSUB completed")
        subscribed = {
            mb.name for mb in await self.storage.list_mailboxes(self._account_id()) if mb.subscribed
        }
        candidates: dict[str, bool] = {n: True for n in subscribed}
        if "%" in pattern:
            # RFC 3501 §6.3.9: a level above a subscribed name is listed \Noselect when "%"
            # stops at it and it is not subscribed itself.
            for name in subscribed:
                for parent in names.parents(name):
                    candidates.setdefault(parent, False)
        lines = [
            encoder.list_data([] if real else ["\\Noselect"], DELIMITER, name, command=b"LSUB")
            for name, real in sorted(candidates.items(), key=lambda i: (i[0] != "INBOX", i[0]))
            if list_match(pattern, name)
        ]
        await self.out.write(b"".join(lines))
        return _ok("LSUB completed")

    async def _status(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, StatusArgs)
        mailbox = await self.storage.get_mailbox(self._account_id(), args.mailbox)
        if mailbox is None:
            return _no("Mailbox does not exist", ResponseCode.NONEXISTENT)
        await self.out.write(await self._status_line(mailbox, args.items))
        return _ok("STATUS completed")

    async def _status_line(self, mailbox: Mailbox, items: Sequence[str]) -> bytes:
        status = await self.storage.mailbox_status(mailbox.id)
        mb = status.mailbox
        recent = deleted = 0
        if "RECENT" in items or "DELETED" in items:
            listed = await self.storage.list_messages(mb.id)
            claimed = self.tracker.claimed((mb.id, mb.uidvalidity))
            recent = sum(1 for uid, _, _ in listed if uid > claimed)
            deleted = sum(1 for _, _, flags in listed if "\\Deleted" in flags)
        values = {
            "MESSAGES": status.messages,
            "RECENT": recent,
            "UIDNEXT": mb.uidnext,
            "UIDVALIDITY": mb.uidvalidity,
            "UNSEEN": status.unseen,
            "HIGHESTMODSEQ": mb.highestmodseq,
            "SIZE": status.size,
            "DELETED": deleted,
            "APPENDLIMIT": self.app.config.limits.imap_literal_size,
        }
        return encoder.status(mb.name, [(item, values[item]) for item in items])

    async def _append(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, AppendArgs)
        bad = check_flags(args.flags)
        if bad is not None:
            return _bad(f"Invalid system flag {bad}")
        account_id = self._account_id()
        mailbox = await self.storage.get_mailbox(account_id, args.mailbox)
        if mailbox is None:
            return _no("Mailbox does not exist", ResponseCode.TRYCREATE)
        data = normalise_line_ends(args.message)
        if len(data) >= PARSE_IN_THREAD:
            info = await asyncio.to_thread(parse_message, data)
        else:
            info = parse_message(data)
        blob = BlobSource(hashlib.sha256(data).hexdigest(), len(data), info.to_json(), data=data)
        when = None if args.internal_date is None else args.internal_date.timestamp()
        target = AppendTarget(
            account_id, mailbox_id=mailbox.id, flags=storable_flags(args.flags), internaldate=when
        )
        [(_, uid)] = await self.storage.append(blob, [target])
        sel = self.selected
        if sel is not None and sel.mailbox_id == mailbox.id:
            # RFC 3501 §6.3.11: EXISTS now; from memory when nothing can have come before it
            if sel.appended(uid, target.flags):
                self._expect(ChangeKind.APPEND, (uid,))
            else:
                await self._sync(force=True)
        return _ok("APPEND completed", ResponseCode.appenduid(mailbox.uidvalidity, uid))

    async def _idle(self, cmd: Command) -> _Done:
        self._idle_tag = cmd.tag
        await self.out.write(encoder.continuation("idling"))
        action = await self.idle_changes()  # what is owed already goes out now
        if action is not Action.NONE:
            return _Done(None, action=action)
        return _CONTINUE_IDLE

    async def _namespace(self, cmd: Command) -> _Done:
        await self.out.write(encoder.namespace([("", DELIMITER)]))
        return _ok("NAMESPACE completed")

    async def _enable(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, EnableArgs)
        await self.out.write(encoder.enabled(()))  # nothing we advertise is ENABLE-able
        return _ok("ENABLE completed")

    # -- selected ---------------------------------------------------------------------------

    def _sel(self) -> SelectedMailbox:
        assert self.selected is not None
        return self.selected

    async def _close(self, cmd: Command) -> _Done:
        sel = self._sel()
        self._deselect()
        if not sel.readonly:  # RFC 3501 §6.4.2: expunge silently
            await self.storage.expunge(sel.mailbox_id)
        return _ok("CLOSE completed")

    async def _unselect(self, cmd: Command) -> _Done:
        self._deselect()
        return _ok("UNSELECT completed")

    async def _expunge(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, ExpungeArgs)
        sel = self._sel()
        if sel.readonly:
            return _no("Mailbox is read-only")
        uids: list[int] | None = None
        if args.uids is not None:
            uids = [u for _, u in sel.resolve_uids(args.uids) if not sel.is_gone(u)]
            if not uids:
                return _ok("EXPUNGE completed")
        gone = await self.storage.expunge(sel.mailbox_id, uids)
        self._expect(ChangeKind.EXPUNGE, gone)
        sel.expunged(gone)
        return _ok("EXPUNGE completed")

    def _resolve(self, cmd: Command, seqset: SequenceSet) -> list[tuple[int, int]] | None:
        """``(seq, uid)`` pairs; None for a sequence set naming no existing message."""
        sel = self._sel()
        if cmd.uid:
            return sel.resolve_uids(seqset)
        return sel.resolve_seqs(seqset)

    async def _search(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, SearchArgs)
        if args.return_options is not None:
            return _bad("ESEARCH is not supported")
        sel = self._sel()
        largest_seq, largest_uid = sel.search_bounds()
        searcher = search.Searcher(args.key, largest_seq=largest_seq, largest_uid=largest_uid)
        flags, is_recent, by_uid = sel.flags, sel.is_recent, cmd.uid
        candidates = [(i, u) for i, u in enumerate(sel.uids, 1) if not sel.is_gone(u)]
        hits: list[int] = []
        if not searcher.needs_record:  # flags, numbers and UIDs: no storage at all
            test = searcher.matches_state
            hits = [u if by_uid else i for i, u in candidates if test(i, u, flags(u), is_recent(u))]
        else:
            for at in range(0, len(candidates), SEARCH_BATCH):
                batch = candidates[at : at + SEARCH_BATCH]
                hits.extend(await self._search_batch(searcher, batch, by_uid))
        await self.out.write(encoder.search(hits))
        return _ok("SEARCH completed")

    async def _search_batch(
        self, searcher: search.Searcher, batch: list[tuple[int, int]], by_uid: bool
    ) -> list[int]:
        """Evaluate ``(seq, uid)`` pairs that need what storage holds: one light query for
        their sizes, dates and blobs, the structure only for blobs not in :data:`INFO_CACHE`,
        and bytes only when the memo cannot stand in for them."""
        sel = self._sel()
        metas = await self.storage.fetch_meta(sel.mailbox_id, [u for _, u in batch])
        meta = {m[0]: m for m in metas}
        entries: dict[str, CachedInfo] = {}
        envelope_only = searcher.envelope_only
        if searcher.needs_structure or searcher.needs_bytes:
            missing: list[int] = []
            for m in metas:
                if m[4] not in entries:
                    entry = INFO_CACHE.peek(m[4])
                    if entry is None:
                        missing.append(m[0])
                    else:
                        entries[m[4]] = entry
            if missing:
                for rec in await self.storage.fetch_messages(sel.mailbox_id, missing):
                    if rec.blob_id not in entries:
                        entries[rec.blob_id] = INFO_CACHE.load(rec.blob_id, rec.structure)
        hits: list[int] = []
        for seq, uid in batch:
            found = meta.get(uid)
            if found is None:  # expunged meanwhile
                continue
            _, modseq, internaldate, size, blob_id = found
            info: MessageInfo | None = None
            envelope: Envelope | None = None
            memo: Memo | None = None
            entry = entries.get(blob_id)
            if entry is not None:
                memo = entry.memo
                if envelope_only:
                    envelope = entry.envelope
                else:
                    info = entry.info
            blob: bytes | None = None
            if searcher.needs_bytes:
                start, end = searcher.blob_range(info, memo)
                if (start, end) != (0, 0):
                    try:
                        blob = await self.storage.read_blob(blob_id, start, end)
                    except NotFound:
                        continue
            if searcher.matches(
                seq,
                uid,
                sel.flags(uid),
                sel.is_recent(uid),
                internaldate,
                size,
                modseq,
                info,
                memo,
                blob,
                envelope,
            ):
                hits.append(uid if by_uid else seq)
        return hits

    async def _fetch(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, FetchArgs)
        if args.changed_since is not None or args.vanished:
            return _bad("CONDSTORE is not supported")
        sel = self._sel()
        atts = list(args.atts)
        if cmd.uid and not any(a.name == "UID" and a.section is None for a in atts):
            atts.insert(0, _UID_ATT)  # RFC 3501 §6.4.8: UID FETCH always returns the UID
        if all(a.section is None and a.name in _STATE_ATTS for a in atts):
            positions = sel.positions(args.seqset, uid=cmd.uid)
            if positions is None:
                return _bad("Invalid message sequence number")
            await self._fetch_state(StateItems(atts), positions)
            return _ok("FETCH completed")
        pairs = self._resolve(cmd, args.seqset)
        if pairs is None:
            return _bad("Invalid message sequence number")
        renderer = fetch.Renderer(atts)
        plan = renderer.plan
        shows_flags = any(a.name == "FLAGS" for a in atts)
        with_flags = renderer if shows_flags else None  # made when first needed
        seen_now: set[int] = set()
        if plan.sets_seen and not sel.readonly:
            unseen = [u for _, u in pairs if SEEN not in sel.flags(u) and not sel.is_gone(u)]
            if unseen:
                results = await self.storage.store_flags(
                    sel.mailbox_id, unseen, FlagMode.ADD, (SEEN,)
                )
                self._stored(results)
                seen_now.update(r.uid for r in results)
        if shows_flags or seen_now:
            shown = sel.flag_sets(map(itemgetter(1), pairs))
            keywords = sel.new_keywords(f for flags in shown for f in flags)
            if keywords:
                await self.out.write(keywords)
        records: dict[int, MessageRecord] = {}
        live = [u for _, u in pairs if not sel.is_gone(u)]
        if live:
            found = await self.storage.fetch_messages(sel.mailbox_id, live)
            records = {r.uid: r for r in found}
        missing = False
        parts: list[bytes] = []
        pending = 0
        for seq, uid in pairs:
            these = renderer
            if uid in seen_now:
                if with_flags is None:
                    with_flags = fetch.Renderer([*atts, _FLAGS_ATT])
                these = with_flags
            flags = sel.client_flags(uid)
            rec = records.get(uid)
            rendered = None if rec is None else await self._render(these, rec, flags)
            if rendered is None:
                missing = True
                continue
            items = rendered
            if shows_flags or uid in seen_now:
                sel.reported(uid)
            line = encoder.fetch(seq, items)
            parts.append(line)
            pending += len(line)
            if pending >= _WRITE_BATCH:  # stream: never hold the whole answer
                await self.out.write(b"".join(parts))
                parts.clear()
                pending = 0
        if parts:
            await self.out.write(b"".join(parts))
        if missing:
            return _no("Some of the requested messages no longer exist", ResponseCode.EXPUNGEISSUED)
        return _ok("FETCH completed")

    async def _fetch_state(self, items: StateItems, positions: list[tuple[int, int]]) -> None:
        """FETCH of UID and FLAGS only: from the selected state, ghosts included (RFC 2180
        §4.1.3), one formatting operation per message (the command clients resynchronise big
        mailboxes with)."""
        sel = self._sel()
        uids = sel.uids
        if items.shows_flags:  # a keyword the client has not been told about comes first
            shown: set[frozenset[str]] = set()
            for start, stop in positions:
                shown |= sel.flag_sets(uids[start:stop])
            keywords = sel.new_keywords(f for flags in shown for f in flags)
            if keywords:
                await self.out.write(keywords)
        for start, stop in positions:
            for at in range(start, stop, _STATE_BATCH):  # stream: never hold the whole answer
                end = min(stop, at + _STATE_BATCH)
                chunk = uids[at:end]
                flags = sel.client_flags_list(chunk)
                await self.out.write(items.lines(range(at + 1, end + 1), chunk, flags))
                if items.shows_flags:
                    sel.reported_all(chunk)

    async def _render(
        self, renderer: fetch.Renderer, rec: MessageRecord, flags: frozenset[str]
    ) -> list[bytes] | None:
        """One message's FETCH items; None when its bytes are gone."""
        plan = renderer.plan
        info: MessageInfo | None = None
        memo: Memo | None = None
        if plan.needs_structure:
            entry = INFO_CACHE.entry(rec)
            info, memo = entry.info, entry.memo
        blob: bytes | None = None
        start = 0
        if plan.needs_blob or (plan.needs_structure and info is None):
            if plan.needs_structure and info is None:
                start, end = 0, None  # damaged cache: render parses the whole message
            else:
                start, end = renderer.byte_range(info)
            if (start, end) == (0, 0):
                blob = b""
            else:
                try:
                    blob = await self.storage.read_blob(rec.blob_id, start, end)
                except NotFound:
                    return None
        return renderer.render(
            rec.uid, flags, rec.internaldate, rec.size, rec.modseq, info, blob, start, memo
        )

    def _stored(self, results: Sequence[StoreResult]) -> None:
        sel = self._sel()
        for r in results:
            sel.stored(r.uid, r.flags)
        if results:
            self._expect(ChangeKind.FLAGS, (r.uid for r in results), results[0].modseq)

    async def _store(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, StoreArgs)
        if args.unchanged_since is not None:
            return _bad("CONDSTORE is not supported")
        sel = self._sel()
        bad = check_flags(args.flags)
        if bad is not None:
            return _bad(f"Invalid system flag {bad}")
        pairs = self._resolve(cmd, args.seqset)
        if pairs is None:
            return _bad("Invalid message sequence number")
        if sel.readonly:
            return _no("Mailbox is read-only")
        flags = storable_flags(args.flags)
        live = [(seq, u) for seq, u in pairs if not sel.is_gone(u)]
        before = {u: sel.flags(u) for _, u in live}
        if live and (flags or args.mode == "replace"):
            results = await self.storage.store_flags(
                sel.mailbox_id, [u for _, u in live], _FLAG_MODES[args.mode], flags
            )
            self._stored(results)
        report = [
            (seq, uid)
            for seq, uid in live
            if not args.silent or sel.flags(uid) != _expected_flags(before[uid], args.mode, flags)
        ]
        # a keyword the client has not been told about is announced before it is shown
        parts = [sel.new_keywords(f for _, uid in report for f in sel.flags(uid))]
        for seq, uid in report:
            parts.append(sel.flags_fetch(seq, uid))
            sel.reported(uid)
        await self.out.write(b"".join(parts))
        if len(live) != len(pairs):
            return _no("Some of the messages no longer exist", ResponseCode.EXPUNGEISSUED)
        return _ok("STORE completed")

    async def _copy(self, cmd: Command) -> _Done:
        args = cmd.args
        assert isinstance(args, CopyArgs)
        sel = self._sel()
        move = cmd.name == "MOVE"
        pairs = self._resolve(cmd, args.seqset)
        if pairs is None:
            return _bad("Invalid message sequence number")
        if move and sel.readonly:
            return _no("Mailbox is read-only")
        dest = await self.storage.get_mailbox(self._account_id(), args.mailbox)
        if dest is None:
            return _no("Mailbox does not exist", ResponseCode.TRYCREATE)
        uids = [u for _, u in pairs if not sel.is_gone(u)]
        if not uids:
            if len(pairs):
                return _no("The messages no longer exist", ResponseCode.EXPUNGEISSUED)
            return _ok(f"{cmd.name} completed")
        if move:
            mapping = await self.storage.move_messages(sel.mailbox_id, uids, dest.id)
        else:
            mapping = await self.storage.copy_messages(sel.mailbox_id, uids, dest.id)
        code = None
        if mapping:
            code = ResponseCode.copyuid(
                dest.uidvalidity, [s for s, _ in mapping], [d for _, d in mapping]
            )
        if dest.id == sel.mailbox_id:
            self._dirty = True
        if move:
            if code is not None:
                await self.out.write(encoder.untagged(encoder.OK, "Moved", code))
            self._expect(ChangeKind.EXPUNGE, (s for s, _ in mapping))
            sel.expunged(s for s, _ in mapping)
            code = None
        if len(mapping) != len(pairs):
            return _no("Some of the messages no longer exist", ResponseCode.EXPUNGEISSUED)
        return _ok(f"{cmd.name} completed", code)


_HANDLERS: Final[dict[str, Callable[[ImapSession, Command], Awaitable[_Done]]]] = {
    "CAPABILITY": ImapSession._capability,
    "NOOP": ImapSession._noop,
    "LOGOUT": ImapSession._logout,
    "ID": ImapSession._id,
    "STARTTLS": ImapSession._starttls,
    "AUTHENTICATE": ImapSession._authenticate,
    "LOGIN": ImapSession._login_command,
    "SELECT": ImapSession._select,
    "EXAMINE": ImapSession._select,
    "CREATE": ImapSession._create,
    "DELETE": ImapSession._delete,
    "RENAME": ImapSession._rename,
    "SUBSCRIBE": ImapSession._subscribe,
    "UNSUBSCRIBE": ImapSession._subscribe,
    "LIST": ImapSession._list,
    "LSUB": ImapSession._lsub,
    "STATUS": ImapSession._status,
    "APPEND": ImapSession._append,
    "IDLE": ImapSession._idle,
    "NAMESPACE": ImapSession._namespace,
    "ENABLE": ImapSession._enable,
    "CHECK": ImapSession._noop,
    "CLOSE": ImapSession._close,
    "UNSELECT": ImapSession._unselect,
    "EXPUNGE": ImapSession._expunge,
    "SEARCH": ImapSession._search,
    "FETCH": ImapSession._fetch,
    "STORE": ImapSession._store,
    "COPY": ImapSession._copy,
    "MOVE": ImapSession._copy,
}
"""Command name → handler (one table for every session, not per connection)."""


def _load_info(blob_id: str, structure: bytes) -> MessageInfo | None:
    """The cached structure, or None if it cannot be read (render then parses the bytes)."""
    try:
        return MessageInfo.from_json(structure)
    except ValueError:
        log.warning("imap: damaged cached structure for blob %s", blob_id)
        return None


def _memo_cost(value: object) -> int:
    """Rough octets a memo value holds (object headers included)."""
    if isinstance(value, bytes | str):
        return len(value) + 64
    if isinstance(value, list):
        return sum(len(v) + 64 for v in value if isinstance(v, str)) + 64
    return 64


class Memo(dict[str, object]):
    """Values derived from one cached structure: encoded FETCH items
    (:func:`letterbird.imap.fetch.render`) and decoded search text
    (:class:`letterbird.imap.search.Searcher`). Each value added is charged to the cache that
    holds the entry; a value the cache cannot afford (larger than an eighth of its budget, or
    the entry was evicted meanwhile) is not kept."""

    __slots__ = ("_entry",)

    def __init__(self, entry: CachedInfo) -> None:
        super().__init__()
        self._entry = entry

    def __setitem__(self, key: str, value: object) -> None:
        if self._entry.charge(_memo_cost(value)):
            super().__setitem__(key, value)


class CachedInfo:
    """One entry of :class:`InfoCache`: a message structure as stored (JSON), decoded when
    first needed — all of it (:attr:`info`), or only the envelope (:attr:`envelope`, a
    fraction of the cost, which is all SEARCH on From/To/Subject needs) — and the
    :class:`Memo` of values derived from it."""

    __slots__ = ("_decoded", "_envelope", "_info", "_owner", "blob_id", "cost", "memo", "structure")

    def __init__(self, owner: InfoCache | None, blob_id: str, structure: bytes) -> None:
        self._owner = owner  # None: too large for the cache, not kept
        self.blob_id = blob_id
        self.structure = structure
        self.cost = len(structure)
        self._decoded = False
        self._info: MessageInfo | None = None
        self._envelope: Envelope | None = None
        self.memo = Memo(self)

    @property
    def info(self) -> MessageInfo | None:
        """The decoded structure; None when the stored JSON is damaged."""
        if not self._decoded:
            self._decoded = True
            self._info = _load_info(self.blob_id, self.structure)
        return self._info

    @property
    def envelope(self) -> Envelope | None:
        """The ENVELOPE alone (from :attr:`info` when that is decoded); None when damaged."""
        if self._decoded:
            return None if self._info is None else self._info.envelope
        if self._envelope is None:
            try:
                self._envelope = envelope_from_json(self.structure)
            except ValueError:
                log.warning("imap: damaged cached structure for blob %s", self.blob_id)
                self._decoded = True  # info stays None: damaged
                return None
        return self._envelope

    def charge(self, cost: int) -> bool:
        """Account ``cost`` more octets to this entry; False when it is not (any longer)
        cached, or when a value that large is not worth keeping."""
        owner = self._owner
        return owner is not None and owner.charge(self, cost)


class InfoCache:
    """Message structures by blob hash (:class:`CachedInfo`), least recently used first out.

    Structure is parsed once at delivery and stored as JSON; decoding that JSON, encoding
    ENVELOPE/BODYSTRUCTURE from it and decoding header fields and text for SEARCH are most of
    the cost of those commands, and the same messages are asked for again and again (every
    client, every resync, every search). Entries are immutable and keyed by content hash, so
    they never go stale. ``budget`` bounds the JSON octets kept plus the memo values (a
    decoded structure takes a few times its JSON; the envelope alone, which is all SEARCH on
    From/To/Subject decodes, much less).
    """

    def __init__(self, budget: int = INFO_CACHE_BYTES) -> None:
        self.budget = budget
        self.used = 0
        self._entries: OrderedDict[str, CachedInfo] = OrderedDict()

    def peek(self, blob_id: str) -> CachedInfo | None:
        """The entry for ``blob_id`` if it is cached (it becomes the most recently used)."""
        entry = self._entries.get(blob_id)
        if entry is not None:
            self._entries.move_to_end(blob_id)
        return entry

    def load(self, blob_id: str, structure: bytes) -> CachedInfo:
        """The entry for ``blob_id`` (stored JSON ``structure``), cached unless it is larger
        than the budget; nothing is decoded yet."""
        entry = self.peek(blob_id)
        if entry is not None:
            return entry
        if len(structure) > self.budget:
            return CachedInfo(None, blob_id, structure)
        entry = CachedInfo(self, blob_id, structure)
        self._entries[blob_id] = entry
        self.used += entry.cost
        self._evict()
        return entry

    def entry(self, rec: MessageRecord) -> CachedInfo:
        """The entry for a message record."""
        return self.load(rec.blob_id, rec.structure)

    def get(self, rec: MessageRecord) -> MessageInfo | None:
        """The decoded structure of a message record."""
        return self.load(rec.blob_id, rec.structure).info

    def charge(self, entry: CachedInfo, cost: int) -> bool:
        """Account ``cost`` more octets to ``entry`` (see :meth:`CachedInfo.charge`)."""
        blob_id = entry.blob_id
        if self._entries.get(blob_id) is not entry or cost > self.budget // 8:
            return False
        entry.cost += cost
        self.used += cost
        self._entries.move_to_end(blob_id)
        self._evict()
        return blob_id in self._entries

    def _evict(self) -> None:
        entries = self._entries
        while self.used > self.budget and entries:
            _, old = entries.popitem(last=False)
            self.used -= old.cost

    def clear(self) -> None:
        self._entries.clear()
        self.used = 0

    def __len__(self) -> int:
        return len(self._entries)


INFO_CACHE: Final = InfoCache()
"""The process-wide structure cache every session shares."""


class StateItems:
    """FETCH items that need nothing but the session's state (UID, FLAGS), rendered without
    a call per message into :func:`letterbird.imap.fetch.render`: ``FETCH 1:* (UID FLAGS)`` is
    the command clients resynchronise big mailboxes with. The FLAGS item is rendered by
    ``render`` once per distinct flag set, so the bytes are exactly ``render``'s (a test
    checks the two agree for every order of the items)."""

    __slots__ = ("_flags", "_lines", "_order", "_with_uid", "shows_flags")

    def __init__(self, atts: Sequence[FetchAtt]) -> None:
        order: list[str] = []
        for att in atts:
            if att.name not in order:  # render lists each label once
                order.append(att.name)
        self._order = tuple(order)
        self._with_uid = "UID" in self._order
        self.shows_flags = "FLAGS" in self._order
        self._flags: dict[frozenset[str], bytes] = {}
        self._lines: dict[frozenset[str], bytes] = {}

    def _flags_item(self, flags: frozenset[str]) -> bytes:
        item = self._flags.get(flags)
        if item is None:
            [item] = fetch.render(
                (_FLAGS_ATT,),
                uid=0,
                flags=flags,
                internaldate=0.0,
                size=0,
                modseq=0,
                info=None,
                blob=None,
            )
            self._flags[flags] = item
        return item

    def render(self, uid: int, flags: frozenset[str]) -> list[bytes]:
        return [b"UID %d" % uid if n == "UID" else self._flags_item(flags) for n in self._order]

    def _template(self, flags: frozenset[str]) -> bytes:
        template = self._lines.get(flags)
        if template is None:
            items = [
                b"UID %d" if n == "UID" else self._flags_item(flags).replace(b"%", b"%%")
                for n in self._order
            ]
            template = self._lines[flags] = encoder.fetch(0, items).replace(b"* 0 ", b"* %d ", 1)
        return template

    def line(self, seq: int, uid: int, flags: frozenset[str]) -> bytes:
        """``encoder.fetch(seq, self.render(uid, flags))``, from a template per flag set."""
        template = self._template(flags)
        return template % (seq, uid) if self._with_uid else template % seq

    def lines(
        self, seqs: Iterable[int], uids: Iterable[int], flags: Iterable[frozenset[str]]
    ) -> bytes:
        """:meth:`line` for each message, joined (``flags``: what to show of each)."""
        templates = self._lines
        get = templates.get
        out: list[bytes] = []
        append = out.append
        if self._with_uid:
            for seq, uid, shown in zip(seqs, uids, flags, strict=True):
                append((get(shown) or self._template(shown)) % (seq, uid))
        else:
            for seq, shown in zip(seqs, flags, strict=True):
                append((get(shown) or self._template(shown)) % seq)
        return b"".join(out)
