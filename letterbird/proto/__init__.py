"""Sans-IO protocol cores: pure code fed bytes, returning events and replies.

No sockets, no asyncio, no storage here (a test asserts it).
"""
