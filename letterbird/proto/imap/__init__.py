"""Sans-IO IMAP4rev1 wire layer (RFC 3501 and the extensions an IMAP session needs).

Modules: :mod:`.parser` (incremental command reader and typed commands), :mod:`.grammar`
(tokens), :mod:`.search` (SEARCH key tree), :mod:`.fetchatt` (FETCH attributes),
:mod:`.seqset` (sequence sets), :mod:`.encoder` (responses), :mod:`.codes` (response codes),
:mod:`.mutf7` (modified UTF-7 mailbox names), :mod:`.capabilities` (capability names) and
:mod:`.structure` (ENVELOPE/BODYSTRUCTURE formatting). Nothing here touches sockets, time or
storage.
"""
