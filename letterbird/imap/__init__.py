"""IMAP mailbox semantics above storage (RFC 3501 and the extensions Letterbird advertises).

Modules: :mod:`.session` (the command handlers of one connection, asyncio, calling storage),
:mod:`.selected` (pure selected-mailbox state: sequence numbers, flags, pending EXPUNGE/EXISTS/
FETCH updates, ``\\Recent``), :mod:`.fetch` (pure FETCH rendering) and :mod:`.search` (pure
SEARCH evaluation). The wire format lives in :mod:`letterbird.proto.imap`; the listener in
:mod:`letterbird.server.imap`.
"""
