"""Errors shared by the protocol cores."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer violated the protocol in a way the core cannot recover from."""
