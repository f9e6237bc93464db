"""Sans-IO IMAP4rev1 command reader (RFC 3501 §2.2, §7.5, §9; RFC 7888 LITERAL+/LITERAL-).

Feed bytes with :meth:`CommandReader.receive_data`, then call :meth:`CommandReader.next_event`
until it returns :data:`NEED_DATA`. Events:

* :class:`Command` — a complete, parsed command (``args`` is a typed dataclass per command);
* :class:`ContinuationNeeded` — a synchronising literal ``{n}`` was accepted: the edge sends
  :data:`~letterbird.proto.imap.encoder.CONTINUE_LITERAL` (``+ Ready for literal data``);
* :class:`CommandError` — answer ``tag BAD message`` (``* BAD`` when the tag was unreadable; a
  ``NO`` with a response code for ``SEARCH CHARSET`` we do not support);
* :class:`LiteralTooBig` — answer ``tag NO [TOOBIG]`` (RFC 7888 §4 / RFC 4469 style). For a
  synchronising literal this comes *instead of* the continuation, so the client never sends
  the octets; for a non-synchronising one ``{n+}`` the octets are read and discarded first,
  then the event is reported and the rest of that command is skipped;
* :class:`IdleDone` — in IDLE mode (:meth:`CommandReader.start_idle`), the next line arrived;
* :class:`AuthenticateLine` — in SASL mode (:meth:`CommandReader.read_authenticate_line`),
  the next raw line arrived (the session decodes it with :mod:`letterbird.proto.sasl`).

Framing (RFC 3501 §2.2.1 and §4.3; RFC 7888 §3)::

    literal         = "{" number ["+"] "}" CRLF *CHAR8
                        ; Number represents the number of CHAR8s.
                        ; "+" is a non-synchronizing literal (LITERAL+)
    literal8        = "~{" number ["+"] "}" CRLF *OCTET   ; RFC 3516 BINARY: not supported

A line ending in a literal marker continues with that many octets and then the rest of the
command. Limits, all constructor settings: ``max_line`` (octets of one line, CRLF excluded: a
longer line is reported as soon as it is seen and the rest of it is discarded without
buffering), ``max_literal`` (one literal), ``max_command`` (lines + literals of one command),
``max_literals`` (literals in one command) and ``max_search_depth`` (SEARCH nesting). A lone LF is
accepted as a line end; blank lines between commands are ignored. ``literal8`` is refused (a
synchronising one without continuation, a non-synchronising one after skipping its octets).

Memory: the reader never holds more than one incomplete command (bounded by the limits) plus
whatever the edge fed and has not yet drained with ``next_event`` — as in h11, the edge should
drain events before feeding more, and stop reading while a command is being served.

Command grammar (RFC 3501 §9 unless noted; the search, fetch and sequence-set grammars are in
:mod:`.search`, :mod:`.fetchatt` and :mod:`.seqset`)::

    command         = tag SP (command-any / command-auth / command-nonauth /
                      command-select) CRLF
    command-any     = "CAPABILITY" / "LOGOUT" / "NOOP" / x-command
    command-auth    = append / create / delete / examine / list / lsub /
                      rename / select / status / subscribe / unsubscribe
    command-nonauth = login / authenticate / "STARTTLS"
    command-select  = "CHECK" / "CLOSE" / "EXPUNGE" / copy / fetch / store /
                      uid / search
    append          = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
    authenticate    = "AUTHENTICATE" SP auth-type [SP (base64 / "=")] *(CRLF base64)
                                                               ; SASL-IR, RFC 4959 §7
    copy            = "COPY" SP sequence-set SP mailbox
    create          = "CREATE" SP mailbox
    delete          = "DELETE" SP mailbox
    examine         = "EXAMINE" SP mailbox [select-params]     ; RFC 4466
    fetch           = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
                      fetch-att / "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
    fetch-modifiers = SP "(" fetch-modifier *(SP fetch-modifier) ")"  ; RFC 4466
    fetch-modifier  = "CHANGEDSINCE" SP mod-sequence-value / "VANISHED" ; RFC 7162
    list            = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
                      [SP list-return-opts]                    ; RFC 5258 §6
    login           = "LOGIN" SP userid SP password
    lsub            = "LSUB" SP mailbox SP list-mailbox
    move            = "MOVE" SP sequence-set SP mailbox        ; RFC 6851
    rename          = "RENAME" SP mailbox SP mailbox
    search          = "SEARCH" [SP "CHARSET" SP astring] 1*(SP search-key)
    select          = "SELECT" SP mailbox [select-params]      ; RFC 4466
    select-params   = SP "(" select-param *(SP select-param) ")"
    select-param    = "CONDSTORE" / "QRESYNC" SP "(" uidvalidity SP
                      mod-sequence-value [SP known-uids] [SP seq-match-data] ")"  ; RFC 7162
    status          = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    store           = "STORE" SP sequence-set [store-modifiers] SP store-att-flags
    store-modifiers = SP "(" "UNCHANGEDSINCE" SP mod-sequence-valzer ")"  ; RFC 7162
    store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    subscribe       = "SUBSCRIBE" SP mailbox
    uid             = "UID" SP (copy / move / fetch / search / store / uid-expunge)
    uid-expunge     = "EXPUNGE" SP sequence-set               ; RFC 4315
    unsubscribe     = "UNSUBSCRIBE" SP mailbox
    idle            = "IDLE" CRLF "DONE"                       ; RFC 2177
    namespace       = "NAMESPACE"                              ; RFC 2342
    enable          = "ENABLE" 1*(SP capability)               ; RFC 5161
    unselect        = "UNSELECT"                               ; RFC 3691
    id              = "ID" SP id-params-list                   ; RFC 2971
    id-params-list  = "(" *(string SP nstring) ")" / nil
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, TypeAlias

from letterbird.proto.imap import encoder
from letterbird.proto.imap.codes import ResponseCode
from letterbird.proto.imap.fetchatt import FetchAtt, parse_fetch_atts
from letterbird.proto.imap.grammar import (
    MAX_MODSEQ,
    TAG,
    ParseError,
    Scanner,
    decode_mailbox,
)
from letterbird.proto.imap.search import SearchArgs, parse_search
from letterbird.proto.imap.seqset import MAX_NUMBER, SequenceSet

__all__ = [
    "COMMANDS",
    "NEED_DATA",
    "STATUS_ITEMS",
    "UID_COMMANDS",
    "AppendArgs",
    "AuthenticateArgs",
    "AuthenticateLine",
    "Command",
    "CommandArgs",
    "CommandError",
    "CommandReader",
    "ContinuationNeeded",
    "CopyArgs",
    "EnableArgs",
    "Event",
    "ExpungeArgs",
    "FetchArgs",
    "IdArgs",
    "IdleDone",
    "ListArgs",
    "LiteralTooBig",
    "LoginArgs",
    "MailboxArgs",
    "QResyncParams",
    "RenameArgs",
    "SearchArgs",
    "SelectArgs",
    "Sentinel",
    "StatusArgs",
    "StoreArgs",
]


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = Sentinel.NEED_DATA
"""``next_event`` has nothing to report until more bytes arrive."""


# -- command arguments ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticateArgs:
    """``mechanism`` upper-cased; ``initial_response`` is the SASL-IR base64 text (``"="`` for
    an empty response; decode with :func:`letterbird.proto.sasl.decode_base64`) or None."""

    mechanism: str
    initial_response: str | None = None


@dataclass(frozen=True, slots=True)
class LoginArgs:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class QResyncParams:
    """RFC 7162 §3.2.5 ``QRESYNC (uidvalidity modseq [known-uids] [(seqs uids)])``."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_seqs: SequenceSet | None = None
    known_seq_uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class SelectArgs:
    """SELECT and EXAMINE."""

    mailbox: str
    condstore: bool = False
    qresync: QResyncParams | None = None


@dataclass(frozen=True, slots=True)
class MailboxArgs:
    """CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class RenameArgs:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class ListArgs:
    """LIST (RFC 3501 and RFC 5258 extended form) and LSUB.

    ``reference`` is not INBOX-normalised (it is a prefix); ``patterns`` has one entry unless
    the extended ``(p1 p2)`` form was used. Options are upper-cased; ``status_items`` is the
    RFC 5819 ``RETURN (STATUS (...))`` list or None.
    """

    reference: str
    patterns: tuple[str, ...]
    select_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendArgs:
    """``message`` is the literal's octets; ``internal_date`` is timezone-aware."""

    mailbox: str
    flags: tuple[str, ...]
    internal_date: datetime | None
    message: bytes


@dataclass(frozen=True, slots=True)
class ExpungeArgs:
    """``uids`` for UID EXPUNGE (RFC 4315), None for plain EXPUNGE."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class FetchArgs:
    """``macro`` is ALL/FAST/FULL when one was used (``atts`` holds its expansion)."""

    seqset: SequenceSet
    atts: tuple[FetchAtt, ...]
    macro: str | None = None
    changed_since: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class StoreArgs:
    """``mode``: ``replace`` (FLAGS), ``add`` (+FLAGS) or ``remove`` (-FLAGS)."""

    seqset: SequenceSet
    mode: Literal["replace", "add", "remove"]
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class CopyArgs:
    """COPY and MOVE."""

    seqset: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class EnableArgs:
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdArgs:
    """RFC 2971: None for ``ID NIL``, else the (field, value) pairs in order."""

    params: tuple[tuple[str, str | None], ...] | None


CommandArgs: TypeAlias = (
    AuthenticateArgs
    | LoginArgs
    | SelectArgs
    | MailboxArgs
    | RenameArgs
    | ListArgs
    | StatusArgs
    | AppendArgs
    | ExpungeArgs
    | SearchArgs
    | FetchArgs
    | StoreArgs
    | CopyArgs
    | EnableArgs
    | IdArgs
    | None
)


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command. ``name`` is upper-cased without the ``UID`` prefix; ``uid`` says
    whether it came as ``UID FETCH`` etc. Argument-less commands have ``args`` None."""

    tag: str
    name: str
    args: CommandArgs = None
    uid: bool = False


@dataclass(frozen=True, slots=True)
class ContinuationNeeded:
    """A synchronising literal was accepted: send ``+ Ready for literal data``."""

    tag: str | None

    def reply(self) -> bytes:
        return encoder.CONTINUE_LITERAL


@dataclass(frozen=True, slots=True)
class CommandError:
    """Answer with :meth:`reply`: ``tag BAD message`` (``* BAD`` if the tag was unreadable)."""

    tag: str | None
    message: str
    status: bytes = encoder.BAD
    code: ResponseCode | None = None

    def reply(self) -> bytes:
        if self.tag is None:
            return encoder.untagged(self.status, self.message, self.code)
        return encoder.tagged(self.tag, self.status, self.message, self.code)


@dataclass(frozen=True, slots=True)
class LiteralTooBig:
    """A literal of ``size`` octets exceeded the limit: answer ``tag NO [TOOBIG]``."""

    tag: str | None
    size: int

    def reply(self) -> bytes:
        message = "Literal too big"
        if self.tag is None:
            return encoder.untagged(encoder.NO, message, ResponseCode.TOOBIG)
        return encoder.tagged(self.tag, encoder.NO, message, ResponseCode.TOOBIG)


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The line that ends IDLE arrived; ``valid`` is False if it was not ``DONE`` (answer the
    IDLE tag with BAD) — either way the reader is back in command mode."""

    valid: bool


@dataclass(frozen=True, slots=True)
class AuthenticateLine:
    """One raw SASL response line (CRLF stripped), e.g. base64 text or ``*`` to cancel."""

    data: bytes


Event: TypeAlias = (
    Command | ContinuationNeeded | CommandError | LiteralTooBig | IdleDone | AuthenticateLine
)


# -- command grammar -----------------------------------------------------------------------------

STATUS_ITEMS: Final = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "HIGHESTMODSEQ",  # RFC 7162
        "SIZE",  # RFC 8438
        "DELETED",  # RFC 9051
        "APPENDLIMIT",  # RFC 7889
    }
)
_LIST_SELECT_BASE: Final = frozenset({"SUBSCRIBED", "SPECIAL-USE"})
_LIST_SELECT: Final = _LIST_SELECT_BASE | {"REMOTE", "RECURSIVEMATCH"}
_LIST_RETURN: Final = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})
_STORE_ATT: Final = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.I)
# base64 = *(4base64-char) [base64-terminal]  (RFC 3501 §9); SASL-IR adds "=" for empty.
_BASE64: Final = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _status_items(s: Scanner) -> tuple[str, ...]:
    """``"(" status-att *(SP status-att) ")"``."""
    s.char(0x28, "'(' before status items")
    items = [s.keyword("a status item")]
    while s.try_sp():
        items.append(s.keyword("a status item"))
    s.char(0x29, "')' after status items")
    for item in items:
        if item not in STATUS_ITEMS:
            raise ParseError(f"unknown status item {item[:40]}")
    return tuple(items)


def _mod_sequence(s: Scanner) -> int:
    return s.number("a mod-sequence", MAX_MODSEQ)


def _no_args(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    return None


def _authenticate(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    mechanism = s.keyword("a SASL mechanism")
    initial: str | None = None
    if s.try_sp():
        if s.try_char(0x3D):  # "=": empty initial response
            initial = "="
        else:
            m = s.match(_BASE64)
            if m is None or not m.group():
                raise ParseError("initial response is not base64")
            initial = m.group().decode("ascii")
    return AuthenticateArgs(mechanism, initial)


def _login(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    user = s.astring_text("a user name")
    s.sp()
    return LoginArgs(user, s.astring_text("a password"))


def _qresync(s: Scanner) -> QResyncParams:
    s.char(0x28, "'(' after QRESYNC")
    uidvalidity = s.nz_number("a UIDVALIDITY")
    s.sp()
    modseq = _mod_sequence(s)
    known_uids = seqs = seq_uids = None
    if s.try_sp():
        if s.peek() != 0x28:
            known_uids = s.seqset("known UIDs")
            if known_uids.uses_star:
                raise ParseError("known UIDs must not contain *")
            if not s.try_sp():
                return _close_qresync(s, uidvalidity, modseq, known_uids, None, None)
        s.char(0x28, "'(' before sequence match data")
        seqs = s.seqset("known sequence numbers")
        s.sp()
        seq_uids = s.seqset("known UIDs")
        s.char(0x29, "')' after sequence match data")
    return _close_qresync(s, uidvalidity, modseq, known_uids, seqs, seq_uids)


def _close_qresync(
    s: Scanner,
    uidvalidity: int,
    modseq: int,
    known_uids: SequenceSet | None,
    seqs: SequenceSet | None,
    seq_uids: SequenceSet | None,
) -> QResyncParams:
    s.char(0x29, "')' closing QRESYNC")
    return QResyncParams(uidvalidity, modseq, known_uids, seqs, seq_uids)


def _select(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    name = s.mailbox()
    condstore = False
    qresync: QResyncParams | None = None
    if s.try_sp():
        s.char(0x28, "'(' before select parameters")
        while True:
            param = s.keyword("a select parameter")
            if param == "CONDSTORE" and not condstore:
                condstore = True
            elif param == "QRESYNC" and qresync is None:
                s.sp()
                qresync = _qresync(s)
            else:
                raise ParseError(f"unknown or repeated select parameter {param[:40]}")
            if not s.try_sp():
                break
        s.char(0x29, "')' after select parameters")
    return SelectArgs(name, condstore, qresync)


def _mailbox(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    return MailboxArgs(s.mailbox())


def _rename(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    old = s.mailbox()
    s.sp()
    return RenameArgs(old, s.mailbox())


def _options(s: Scanner, allowed: frozenset[str], what: str) -> list[str]:
    """``"(" [option *(SP option)] ")"`` with upper-cased atoms from ``allowed``."""
    s.char(0x28, f"'(' before {what}")
    opts: list[str] = []
    if s.try_char(0x29):
        return opts
    while True:
        opt = s.keyword(what)
        if opt not in allowed:
            raise ParseError(f"unsupported {what} {opt[:40]}")
        opts.append(opt)
        if not s.try_sp():
            break
    s.char(0x29, f"')' after {what}")
    return opts


def _list(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    select_opts: list[str] = []
    if s.peek() == 0x28:
        select_opts = _options(s, _LIST_SELECT, "LIST selection option")
        if "RECURSIVEMATCH" in select_opts and not _LIST_SELECT_BASE.intersection(select_opts):
            raise ParseError("RECURSIVEMATCH needs another selection option")
        s.sp()
    reference = decode_mailbox(s.astring("a reference name"), normalise_inbox=False)
    s.sp()
    if s.try_char(0x28):
        patterns = [s.list_mailbox()]
        while s.try_sp():
            patterns.append(s.list_mailbox())
        s.char(0x29, "')' after mailbox patterns")
    else:
        patterns = [s.list_mailbox()]
    return_opts: list[str] = []
    status_items: tuple[str, ...] | None = None
    if s.try_sp():
        if s.keyword("RETURN") != "RETURN":
            raise ParseError("expected RETURN")
        s.sp()
        s.char(0x28, "'(' after RETURN")
        if not s.try_char(0x29):
            while True:
                opt = s.keyword("a LIST return option")
                if opt not in _LIST_RETURN:
                    raise ParseError(f"unsupported LIST return option {opt[:40]}")
                if opt == "STATUS":
                    s.sp()
                    status_items = _status_items(s)
                return_opts.append(opt)
                if not s.try_sp():
                    break
            s.char(0x29, "')' after RETURN options")
    return ListArgs(
        reference, tuple(patterns), tuple(select_opts), tuple(return_opts), status_items
    )


def _lsub(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    reference = decode_mailbox(s.astring("a reference name"), normalise_inbox=False)
    s.sp()
    return ListArgs(reference, (s.list_mailbox(),))


def _status(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    name = s.mailbox()
    s.sp()
    return StatusArgs(name, _status_items(s))


def _append(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    name = s.mailbox()
    s.sp()
    flags: tuple[str, ...] = ()
    if s.peek() == 0x28:
        flags = s.flag_list()
        s.sp()
    when: datetime | None = None
    if s.peek() == 0x22:
        when = s.date_time()
        s.sp()
    return AppendArgs(name, flags, when, s.literal())


def _expunge(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    if not uid:
        return ExpungeArgs()
    s.sp()
    return ExpungeArgs(s.seqset("a UID set"))


def _search(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    return parse_search(s, max_depth=depth)


def _fetch(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    seqset = s.seqset()
    s.sp()
    atts, macro = parse_fetch_atts(s)
    changed_since: int | None = None
    vanished = False
    if s.try_sp():
        s.char(0x28, "'(' before fetch modifiers")
        while True:
            mod = s.keyword("a fetch modifier")
            if mod == "CHANGEDSINCE" and changed_since is None:
                s.sp()
                changed_since = _mod_sequence(s)
            elif mod == "VANISHED" and not vanished:
                vanished = True
            else:
                raise ParseError(f"unknown or repeated fetch modifier {mod[:40]}")
            if not s.try_sp():
                break
        s.char(0x29, "')' after fetch modifiers")
        if vanished and (not uid or changed_since is None):
            raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    return FetchArgs(seqset, atts, macro, changed_since, vanished)


def _store(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    seqset = s.seqset()
    s.sp()
    unchanged_since: int | None = None
    if s.try_char(0x28):
        if s.keyword("UNCHANGEDSINCE") != "UNCHANGEDSINCE":
            raise ParseError("the only STORE modifier is UNCHANGEDSINCE")
        s.sp()
        unchanged_since = _mod_sequence(s)
        s.char(0x29, "')' after STORE modifier")
        s.sp()
    m = s.expect(_STORE_ATT, "FLAGS, +FLAGS or -FLAGS")
    sign, silent = m.groups()
    mode: Literal["replace", "add", "remove"] = (
        "add" if sign == b"+" else "remove" if sign == b"-" else "replace"
    )
    s.sp()
    if s.peek() == 0x28:
        flags = s.flag_list()
    else:
        items = [s.flag()]
        while s.try_sp():
            items.append(s.flag())
        flags = tuple(items)
    return StoreArgs(seqset, mode, silent is not None, flags, unchanged_since)


def _copy(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    seqset = s.seqset()
    s.sp()
    return CopyArgs(seqset, s.mailbox())


def _enable(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    caps = [s.keyword("a capability")]
    while s.try_sp():
        caps.append(s.keyword("a capability"))
    return EnableArgs(tuple(caps))


def _id(s: Scanner, uid: bool, depth: int) -> CommandArgs:
    s.sp()
    if s.peek_keyword() == "NIL":
        s.skip(3)
        return IdArgs(None)
    s.char(0x28, "'(' or NIL")
    params: list[tuple[str, str | None]] = []
    if not s.try_char(0x29):
        while True:
            key = s.string("an ID field name").decode("utf-8", "replace")
            s.sp()
            value = s.nstring("an ID value")
            params.append((key, None if value is None else value.decode("utf-8", "replace")))
            if not s.try_sp():
                break
        s.char(0x29, "')' closing the ID list")
    return IdArgs(tuple(params))


_Handler: TypeAlias = Callable[[Scanner, bool, int], CommandArgs]

COMMANDS: Final[dict[str, _Handler]] = {
    "CAPABILITY": _no_args,
    "NOOP": _no_args,
    "LOGOUT": _no_args,
    "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _mailbox,
    "DELETE": _mailbox,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox,
    "UNSUBSCRIBE": _mailbox,
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "CHECK": _no_args,
    "CLOSE": _no_args,
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "IDLE": _no_args,
    "NAMESPACE": _no_args,
    "ENABLE": _enable,
    "UNSELECT": _no_args,
    "ID": _id,
}
"""Every command the parser knows, by upper-case name."""

UID_COMMANDS: Final = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})


def _head(s: Scanner) -> tuple[str, bool, _Handler]:
    """``tag SP name`` (and ``UID SP name``): everything known before the arguments."""
    name = s.keyword("a command name")
    uid = name == "UID"
    if uid:
        s.sp()
        name = s.keyword("a UID command name")
        if name not in UID_COMMANDS:
            raise ParseError(f"UID {name[:40]} is not a command")
    handler = COMMANDS.get(name)
    if handler is None:
        raise ParseError(f"unknown command {name[:40]}")
    return name, uid, handler


def _tag(s: Scanner) -> str:
    m = s.expect(TAG, "a tag")
    tag = m.group().decode("ascii")
    s.sp()
    return tag


def _line_tag(line: bytes, whole: bool = True) -> str | None:
    """The tag of a command line if it is well formed (``tag SP``, or a lone tag when ``line``
    is the whole line), for error replies."""
    m = TAG.match(line)
    if m is None or line[m.end() : m.end() + 1] not in ((b" ", b"") if whole else (b" ",)):
        return None
    return m.group().decode("ascii")


# -- the reader ----------------------------------------------------------------------------------


class _Mode(enum.Enum):
    LINE = 1
    LITERAL = 2
    SKIP_LINE = 3
    SKIP_LITERAL = 4
    IDLE = 5
    AUTHENTICATE = 6


_LITERAL_MARK: Final = re.compile(rb"\{([0-9]+)(\+?)\}")
_TAIL: Final = 64  # octets of a discarded line kept to spot a literal marker at its end


def _literal_marker(line: bytes) -> tuple[int, int, bool, bool] | None:
    """``(start, size, non_sync, literal8)`` if ``line`` ends with a literal marker.

    ``size`` is ``MAX_NUMBER + 1`` when the number is not a 32-bit ``number``.
    """
    if not line.endswith(b"}"):
        return None
    brace = line.rfind(b"{")
    m = _LITERAL_MARK.fullmatch(line, brace) if brace >= 0 else None
    if m is None:
        return None
    digits = m.group(1)
    size = int(digits) if len(digits) <= 10 else MAX_NUMBER + 1
    literal8 = brace > 0 and line[brace - 1] == 0x7E
    return brace - literal8, size, m.group(2) == b"+", literal8


class _LineTooLong(Exception):
    def __init__(self, line: bytes | None) -> None:
        self.line = line


class CommandReader:
    """Incremental IMAP command reader (see the module docstring).

    Raises only :class:`RuntimeError` for misuse by the caller (switching mode in the middle of
    a command); every input problem becomes an event.
    """

    def __init__(
        self,
        *,
        max_line: int = 65_536,
        max_literal: int = 64 * 1024 * 1024,
        max_command: int = 65 * 1024 * 1024,
        max_literals: int = 64,
        max_search_depth: int = 64,
    ) -> None:
        for name, value in (
            ("max_line", max_line),
            ("max_literal", max_literal),
            ("max_command", max_command),
            ("max_literals", max_literals),
            ("max_search_depth", max_search_depth),
        ):
            if value < 1:
                raise ValueError(f"{name} must be positive")
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_command = max_command
        self.max_literals = max_literals
        self.max_search_depth = max_search_depth
        self._buf = bytearray()
        self._scan = 0
        self._mode = _Mode.LINE
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._size = 0
        self._tag: str | None = None
        self._need = 0
        self._tail = b""
        self._skip_literals = True
        self._pending: Event | None = None

    # -- public API ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the client (an empty chunk is ignored)."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Octets received but not yet consumed (the edge can use it for back-pressure)."""
        return len(self._buf)

    @property
    def idling(self) -> bool:
        return self._mode is _Mode.IDLE

    def start_idle(self) -> None:
        """After sending ``+ idling``: the next line must be ``DONE`` (RFC 2177)."""
        self._switch(_Mode.IDLE)

    def read_authenticate_line(self) -> None:
        """After sending a ``+`` SASL challenge: the next line is returned raw."""
        self._switch(_Mode.AUTHENTICATE)

    def next_event(self) -> Event | Literal[Sentinel.NEED_DATA]:
        """The next event, or :data:`NEED_DATA`."""
        while True:
            mode = self._mode
            if mode is _Mode.LITERAL:
                if len(self._buf) < self._need:
                    return NEED_DATA
                with memoryview(self._buf) as view:
                    self._literals.append(bytes(view[: self._need]))
                del self._buf[: self._need]
                self._mode = _Mode.LINE
                continue
            if mode is _Mode.SKIP_LITERAL:
                n = min(self._need, len(self._buf))
                del self._buf[:n]
                self._need -= n
                if self._need:
                    return NEED_DATA
                self._mode = _Mode.SKIP_LINE
                if self._pending is not None:
                    pending, self._pending = self._pending, None
                    return pending
                continue
            if mode is _Mode.SKIP_LINE:
                if not self._skip_line():
                    return NEED_DATA
                continue
            try:
                line = self._take_line()
            except _LineTooLong as exc:
                return self._line_too_long(exc.line)
            if line is None:
                return NEED_DATA
            if mode is _Mode.IDLE:
                self._mode = _Mode.LINE
                return IdleDone(line.upper() == b"DONE")
            if mode is _Mode.AUTHENTICATE:
                self._mode = _Mode.LINE
                return AuthenticateLine(line)
            event = self._command_line(line)
            if event is not None:
                return event

    # -- internals ----------------------------------------------------------------------------

    def _switch(self, mode: _Mode) -> None:
        if self._mode is not _Mode.LINE or self._lines:
            raise RuntimeError(f"cannot switch to {mode.name} mode in the middle of a command")
        self._mode = mode
        self._scan = 0

    def _reset(self) -> None:
        self._lines = []
        self._literals = []
        self._size = 0
        self._tag = None

    def _take_line(self) -> bytes | None:
        buf = self._buf
        idx = buf.find(b"\n", self._scan)
        if idx < 0:
            if len(buf) > self.max_line + 1:  # +1: a CR may be waiting for its LF
                raise _LineTooLong(None)
            self._scan = len(buf)
            return None
        end = idx - 1 if idx and buf[idx - 1] == 0x0D else idx
        line = bytes(buf[:end])
        del buf[: idx + 1]
        self._scan = 0
        if len(line) > self.max_line:
            raise _LineTooLong(line)
        return line

    def _line_too_long(self, line: bytes | None) -> Event:
        mode = self._mode
        self._skip_literals = mode is _Mode.LINE
        if mode is _Mode.LINE:
            head = bytes(self._buf[:256]) if line is None else line[:256]
            tag = self._tag if self._lines else _line_tag(head, whole=False)
            event: Event = CommandError(tag, "Line too long")
        elif mode is _Mode.IDLE:
            event = IdleDone(False)
        else:
            event = CommandError(None, "Line too long")
        self._reset()
        if line is None:  # still arriving: discard it as it comes
            self._tail = bytes(self._buf[-_TAIL:])
            self._buf.clear()
            self._scan = 0
            self._mode = _Mode.SKIP_LINE
        else:
            self._mode = _Mode.LINE
            self._after_skipped_line(line[-_TAIL:])
        return event

    def _skip_line(self) -> bool:
        """Discard up to the end of the line; True once the line has ended."""
        buf = self._buf
        idx = buf.find(b"\n")
        if idx < 0:
            self._tail = (self._tail + bytes(buf[-_TAIL:]))[-_TAIL:]
            buf.clear()
            return False
        tail = (self._tail + bytes(buf[max(0, idx - _TAIL) : idx]))[-_TAIL:]
        del buf[: idx + 1]
        self._tail = b""
        self._mode = _Mode.LINE
        self._after_skipped_line(tail[:-1] if tail.endswith(b"\r") else tail)
        return True

    def _after_skipped_line(self, tail: bytes) -> None:
        """A discarded line ended: if it announced a non-synchronising literal, skip that too."""
        marker = _literal_marker(tail) if self._skip_literals else None
        if marker is not None and marker[2] and marker[1] <= MAX_NUMBER:
            self._mode = _Mode.SKIP_LITERAL
            self._need = marker[1]

    def _reject(self, event: Event, non_sync: bool, size: int) -> Event | None:
        """Abandon the command being read. A non-synchronising literal's octets are coming
        anyway: skip them (and the rest of the command) and report ``event`` after them."""
        self._reset()
        if non_sync and size <= MAX_NUMBER:
            self._mode = _Mode.SKIP_LITERAL
            self._need = size
            self._skip_literals = True
            self._pending = event
            return None
        return event

    def _command_line(self, line: bytes) -> Event | None:
        """One line of a command in LINE mode; None means "keep reading"."""
        first = not self._lines
        if first:
            if not line:
                return None  # blank lines between commands are ignored
            self._tag = _line_tag(line)
        tag = self._tag
        self._size += len(line) + 2
        marker = _literal_marker(line)
        if marker is None:
            self._lines.append(line)
            if self._size > self.max_command:
                self._reset()
                return CommandError(tag, "Command too long")
            return self._finish()
        start, size, non_sync, literal8 = marker
        if size > MAX_NUMBER:
            self._reset()
            return CommandError(tag, "Invalid literal size")
        if literal8:
            return self._reject(
                CommandError(tag, "literal8 (~{n}) is not supported"), non_sync, size
            )
        if len(self._literals) >= self.max_literals:
            return self._reject(CommandError(tag, "Too many literals"), non_sync, size)
        if size > self.max_literal or self._size + size > self.max_command:
            return self._reject(LiteralTooBig(tag, size), non_sync, size)
        prefix = line[:start]
        if first and not non_sync:
            # Refuse an unknown command before inviting the client to send the literal.
            s = Scanner([prefix], [])
            try:
                _tag(s)
                name, uid, handler = _head(s)
                if handler is _no_args or (name == "EXPUNGE" and not uid):
                    raise ParseError("unexpected extra arguments")
            except ParseError as exc:
                return self._reject(CommandError(tag, exc.message), non_sync, size)
        self._lines.append(prefix)
        self._size += size
        self._need = size
        self._mode = _Mode.LITERAL
        return None if non_sync else ContinuationNeeded(tag)

    def _finish(self) -> Event:
        lines, literals, tag = self._lines, self._literals, self._tag
        self._reset()
        s = Scanner(lines, literals)
        try:
            tag = _tag(s)
            name, uid, handler = _head(s)
            args = handler(s, uid, self.max_search_depth)
            s.end()
        except ParseError as exc:
            return CommandError(tag, exc.message, exc.status, exc.code)
        return Command(tag, name, args, uid)
