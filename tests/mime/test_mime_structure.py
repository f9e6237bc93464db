"""parse_message: MIME tree and byte offsets, envelope and display fields, limits, robustness.

``DOVECOT_SECTIONS`` holds, for a handful of messages, every ``BODY[section]`` Dovecot 2.3.19.1
returned for them (recorded once from a private throw-away instance with ``dovecot_fetch.py``;
the tests do not need Dovecot): slicing the message at our offsets must give the same bytes.
"""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from letterbird.mime import (
    Address,
    BodyPart,
    Limits,
    MessageInfo,
    find_part,
    parse_message,
    section_range,
    walk,
)

DOVECOT_SECTIONS: list[tuple[str, bytes, dict[str, bytes]]] = [
    (
        "mixed",
        b"From: sender@example.com\r\n"
        b"To: undisclosed-recipients:;\r\n"
        b"Subject: nested\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=outer\r\n"
        b"\r\n"
        b"--outer\r\n"
        b'Content-Type: multipart/alternative; boundary="inner"\r\n'
        b"\r\n"
        b"--inner\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"plain body\r\n"
        b"--inner\r\n"
        b'Content-Type: text/html; charset="iso-8859-1"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"Content-Language: en, fr\r\n"
        b"\r\n"
        b"<b>html body \xe9</b>\r\n"
        b"--inner--\r\n"
        b"\r\n"
        b"--outer\r\n"
        b'Content-Type: application/pdf; name="doc.pdf"\r\n'
        b'Content-Disposition: attachment; filename="doc.pdf"; size=12\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-ID: <part2@example.com>\r\n"
        b"Content-Description: A document\r\n"
        b"Content-Location: http://example.com/doc.pdf\r\n"
        b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
        b"\r\n"
        b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29k\r\n"
        b"ZT4+CnN0cmVhbQp4nCvkMlAwUDC1NNUzMVGwMDHUszRSKErlCtfiyuMK5AIAXQ8GCgplbmRzdHJl\r\n"
        b"--outer\r\n"
        b"Content-Type: image/png\r\n"
        b"Content-Disposition: inline\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"\r\n"
        b"iVBORw0KGgo=\r\n"
        b"--outer--\r\n",
        {
            "HEADER": (
                b"From: sender@example.com\r\n"
                b"To: undisclosed-recipients:;\r\n"
                b"Subject: nested\r\n"
                b"MIME-Version: 1.0\r\n"
                b"Content-Type: multipart/mixed; boundary=outer\r\n"
                b"\r\n"
            ),
            "TEXT": (
                b"--outer\r\n"
                b'Content-Type: multipart/alternative; boundary="inner"\r\n'
                b"\r\n"
                b"--inner\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"plain body\r\n"
                b"--inner\r\n"
                b'Content-Type: text/html; charset="iso-8859-1"\r\n'
                b"Content-Transfer-Encoding: 8bit\r\n"
                b"Content-Language: en, fr\r\n"
                b"\r\n"
                b"<b>html body \xe9</b>\r\n"
                b"--inner--\r\n"
                b"\r\n"
                b"--outer\r\n"
                b'Content-Type: application/pdf; name="doc.pdf"\r\n'
                b'Content-Disposition: attachment; filename="doc.pdf"; size=12\r\n'
                b"Content-Transfer-Encoding: base64\r\n"
                b"Content-ID: <part2@example.com>\r\n"
                b"Content-Description: A document\r\n"
                b"Content-Location: http://example.com/doc.pdf\r\n"
                b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
                b"\r\n"
                b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29k\r\n"
                b"ZT4+CnN0cmVhbQp4nCvkMlAwUDC1NNUzMVGwMDHUszRSKErlCtfiyuMK5AIAXQ8GCgplbmRzdHJl\r\n"
                b"--outer\r\n"
                b"Content-Type: image/png\r\n"
                b"Content-Disposition: inline\r\n"
                b"Content-Transfer-Encoding: base64\r\n"
                b"\r\n"
                b"iVBORw0KGgo=\r\n"
                b"--outer--\r\n"
            ),
            "1": (
                b"--inner\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"plain body\r\n"
                b"--inner\r\n"
                b'Content-Type: text/html; charset="iso-8859-1"\r\n'
                b"Content-Transfer-Encoding: 8bit\r\n"
                b"Content-Language: en, fr\r\n"
                b"\r\n"
                b"<b>html body \xe9</b>\r\n"
                b"--inner--\r\n"
            ),
            "1.MIME": (b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'),
            "1.1": (b"plain body"),
            "1.1.MIME": (b"Content-Type: text/plain\r\n\r\n"),
            "1.2": (b"<b>html body \xe9</b>"),
            "1.2.MIME": (
                b'Content-Type: text/html; charset="iso-8859-1"\r\n'
                b"Content-Transfer-Encoding: 8bit\r\n"
                b"Content-Language: en, fr\r\n"
                b"\r\n"
            ),
            "2": (
                b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURlY29k\r\n"
                b"ZT4+CnN0cmVhbQp4nCvkMlAwUDC1NNUzMVGwMDHUszRSKErlCtfiyuMK5AIAXQ8GCgplbmRzdHJl"
            ),
            "2.MIME": (
                b'Content-Type: application/pdf; name="doc.pdf"\r\n'
                b'Content-Disposition: attachment; filename="doc.pdf"; size=12\r\n'
                b"Content-Transfer-Encoding: base64\r\n"
                b"Content-ID: <part2@example.com>\r\n"
                b"Content-Description: A document\r\n"
                b"Content-Location: http://example.com/doc.pdf\r\n"
                b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
                b"\r\n"
            ),
            "3": (b"iVBORw0KGgo="),
            "3.MIME": (
                b"Content-Type: image/png\r\n"
                b"Content-Disposition: inline\r\n"
                b"Content-Transfer-Encoding: base64\r\n"
                b"\r\n"
            ),
        },
    ),
    (
        "rfc822",
        b"From: fwd@example.com\r\n"
        b"To: a@example.com\r\n"
        b"Subject: Fwd: inner\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="X"\r\n'
        b"\r\n"
        b"--X\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"see attached\r\n"
        b"--X\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"Content-Disposition: attachment\r\n"
        b"\r\n"
        b"From: Inner Person <inner@example.org>\r\n"
        b"Sender: sec@example.org\r\n"
        b"Reply-To: list@example.org\r\n"
        b"To: x@example.org\r\n"
        b"Bcc: hidden@example.org\r\n"
        b"Subject: inner\r\n"
        b"Date: Wed, 2 Apr 2025 11:00:00 +0200\r\n"
        b"Message-ID: <inner@example.org>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=Y\r\n"
        b"\r\n"
        b"--Y\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"inner text\r\n"
        b"--Y\r\n"
        b"Content-Type: text/html\r\n"
        b"\r\n"
        b"<p>inner</p>\r\n"
        b"--Y--\r\n"
        b"\r\n"
        b"--X--\r\n",
        {
            "HEADER": (
                b"From: fwd@example.com\r\n"
                b"To: a@example.com\r\n"
                b"Subject: Fwd: inner\r\n"
                b"MIME-Version: 1.0\r\n"
                b'Content-Type: multipart/mixed; boundary="X"\r\n'
                b"\r\n"
            ),
            "TEXT": (
                b"--X\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"see attached\r\n"
                b"--X\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"Content-Disposition: attachment\r\n"
                b"\r\n"
                b"From: Inner Person <inner@example.org>\r\n"
                b"Sender: sec@example.org\r\n"
                b"Reply-To: list@example.org\r\n"
                b"To: x@example.org\r\n"
                b"Bcc: hidden@example.org\r\n"
                b"Subject: inner\r\n"
                b"Date: Wed, 2 Apr 2025 11:00:00 +0200\r\n"
                b"Message-ID: <inner@example.org>\r\n"
                b"MIME-Version: 1.0\r\n"
                b"Content-Type: multipart/alternative; boundary=Y\r\n"
                b"\r\n"
                b"--Y\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"inner text\r\n"
                b"--Y\r\n"
                b"Content-Type: text/html\r\n"
                b"\r\n"
                b"<p>inner</p>\r\n"
                b"--Y--\r\n"
                b"\r\n"
                b"--X--\r\n"
            ),
            "1": (b"see attached"),
            "1.MIME": (b"Content-Type: text/plain\r\n\r\n"),
            "2": (
                b"From: Inner Person <inner@example.org>\r\n"
                b"Sender: sec@example.org\r\n"
                b"Reply-To: list@example.org\r\n"
                b"To: x@example.org\r\n"
                b"Bcc: hidden@example.org\r\n"
                b"Subject: inner\r\n"
                b"Date: Wed, 2 Apr 2025 11:00:00 +0200\r\n"
                b"Message-ID: <inner@example.org>\r\n"
                b"MIME-Version: 1.0\r\n"
                b"Content-Type: multipart/alternative; boundary=Y\r\n"
                b"\r\n"
                b"--Y\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"inner text\r\n"
                b"--Y\r\n"
                b"Content-Type: text/html\r\n"
                b"\r\n"
                b"<p>inner</p>\r\n"
                b"--Y--\r\n"
            ),
            "2.MIME": (b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"),
            "2.HEADER": (
                b"From: Inner Person <inner@example.org>\r\n"
                b"Sender: sec@example.org\r\n"
                b"Reply-To: list@example.org\r\n"
                b"To: x@example.org\r\n"
                b"Bcc: hidden@example.org\r\n"
                b"Subject: inner\r\n"
                b"Date: Wed, 2 Apr 2025 11:00:00 +0200\r\n"
                b"Message-ID: <inner@example.org>\r\n"
                b"MIME-Version: 1.0\r\n"
                b"Content-Type: multipart/alternative; boundary=Y\r\n"
                b"\r\n"
            ),
            "2.TEXT": (
                b"--Y\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"inner text\r\n"
                b"--Y\r\n"
                b"Content-Type: text/html\r\n"
                b"\r\n"
                b"<p>inner</p>\r\n"
                b"--Y--\r\n"
            ),
            "2.1": (b"inner text"),
            "2.1.MIME": (b"Content-Type: text/plain\r\n\r\n"),
            "2.2": (b"<p>inner</p>"),
            "2.2.MIME": (b"Content-Type: text/html\r\n\r\n"),
        },
    ),
    (
        "digest",
        b"From: digest@example.com\r\n"
        b"Subject: digest\r\n"
        b"Content-Type: multipart/digest; boundary=D\r\n"
        b"\r\n"
        b"--D\r\n"
        b"\r\n"
        b"From: one@example.com\r\n"
        b"Subject: one\r\n"
        b"\r\n"
        b"one body\r\n"
        b"--D\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"explicit text\r\n"
        b"--D--\r\n",
        {
            "HEADER": (
                b"From: digest@example.com\r\n"
                b"Subject: digest\r\n"
                b"Content-Type: multipart/digest; boundary=D\r\n"
                b"\r\n"
            ),
            "TEXT": (
                b"--D\r\n"
                b"\r\n"
                b"From: one@example.com\r\n"
                b"Subject: one\r\n"
                b"\r\n"
                b"one body\r\n"
                b"--D\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"explicit text\r\n"
                b"--D--\r\n"
            ),
            "1": (b"From: one@example.com\r\nSubject: one\r\n\r\none body"),
            "1.MIME": (b"\r\n"),
            "1.HEADER": (b"From: one@example.com\r\nSubject: one\r\n\r\n"),
            "1.TEXT": (b"one body"),
            "1.1": (b"one body"),
            "1.1.MIME": (b"From: one@example.com\r\nSubject: one\r\n\r\n"),
            "2": (b"explicit text"),
            "2.MIME": (b"Content-Type: text/plain\r\n\r\n"),
        },
    ),
    (
        "b_padding",
        b"Subject: pad\r\n"
        b'Content-Type: multipart/mixed; boundary="sp ace"\r\n'
        b"\r\n"
        b"preamble line\r\n"
        b"--sp ace  \t\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"one\r\n"
        b"--sp ace\r\n"
        b"\r\n"
        b"no header part\r\n"
        b"--sp ace\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Disposition: attachment; filename=a.txt\r\n"
        b"--sp ace--  \r\n"
        b"epilogue\r\n",
        {
            "HEADER": (b'Subject: pad\r\nContent-Type: multipart/mixed; boundary="sp ace"\r\n\r\n'),
            "TEXT": (
                b"preamble line\r\n"
                b"--sp ace  \t\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"one\r\n"
                b"--sp ace\r\n"
                b"\r\n"
                b"no header part\r\n"
                b"--sp ace\r\n"
                b"Content-Type: text/plain\r\n"
                b"Content-Disposition: attachment; filename=a.txt\r\n"
                b"--sp ace--  \r\n"
                b"epilogue\r\n"
            ),
            "1": (b"one"),
            "1.MIME": (b"Content-Type: text/plain\r\n\r\n"),
            "2": (b"no header part"),
            "2.MIME": (b"\r\n"),
            "3": (b""),
            "3.MIME": (
                b"Content-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt"
            ),
        },
    ),
    (
        "b_outer_in_inner",
        b"Subject: outer boundary inside inner part\r\n"
        b"Content-Type: multipart/mixed; boundary=o\r\n"
        b"\r\n"
        b"--o\r\n"
        b"Content-Type: multipart/alternative; boundary=i\r\n"
        b"\r\n"
        b"--i\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"inner text, inner never closed\r\n"
        b"--o\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"second outer part\r\n"
        b"--o--\r\n",
        {
            "HEADER": (
                b"Subject: outer boundary inside inner part\r\n"
                b"Content-Type: multipart/mixed; boundary=o\r\n"
                b"\r\n"
            ),
            "TEXT": (
                b"--o\r\n"
                b"Content-Type: multipart/alternative; boundary=i\r\n"
                b"\r\n"
                b"--i\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"inner text, inner never closed\r\n"
                b"--o\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"second outer part\r\n"
                b"--o--\r\n"
            ),
            "1": (b"--i\r\nContent-Type: text/plain\r\n\r\ninner text, inner never closed"),
            "1.MIME": (b"Content-Type: multipart/alternative; boundary=i\r\n\r\n"),
            "1.1": (b"inner text, inner never closed"),
            "1.1.MIME": (b"Content-Type: text/plain\r\n\r\n"),
            "2": (b"second outer part"),
            "2.MIME": (b"Content-Type: text/plain\r\n\r\n"),
        },
    ),
    (
        "b_deep_msg",
        b"Subject: level0\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"\r\n"
        b"Subject: level1\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"\r\n"
        b"Subject: level2\r\n"
        b"Content-Type: multipart/mixed; boundary=m\r\n"
        b"\r\n"
        b"--m\r\n"
        b"Content-Type: message/rfc822\r\n"
        b"\r\n"
        b"Subject: level3\r\n"
        b"\r\n"
        b"deep body\r\n"
        b"--m\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"sibling\r\n"
        b"--m--\r\n",
        {
            "HEADER": (b"Subject: level0\r\nContent-Type: message/rfc822\r\n\r\n"),
            "TEXT": (
                b"Subject: level1\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level2\r\n"
                b"Content-Type: multipart/mixed; boundary=m\r\n"
                b"\r\n"
                b"--m\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level3\r\n"
                b"\r\n"
                b"deep body\r\n"
                b"--m\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"sibling\r\n"
                b"--m--\r\n"
            ),
            "1": (
                b"Subject: level1\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level2\r\n"
                b"Content-Type: multipart/mixed; boundary=m\r\n"
                b"\r\n"
                b"--m\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level3\r\n"
                b"\r\n"
                b"deep body\r\n"
                b"--m\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"sibling\r\n"
                b"--m--\r\n"
            ),
            "1.MIME": (b"Subject: level0\r\nContent-Type: message/rfc822\r\n\r\n"),
            "1.HEADER": (b"Subject: level1\r\nContent-Type: message/rfc822\r\n\r\n"),
            "1.TEXT": (
                b"Subject: level2\r\n"
                b"Content-Type: multipart/mixed; boundary=m\r\n"
                b"\r\n"
                b"--m\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level3\r\n"
                b"\r\n"
                b"deep body\r\n"
                b"--m\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"sibling\r\n"
                b"--m--\r\n"
            ),
            "1.1": (
                b"Subject: level2\r\n"
                b"Content-Type: multipart/mixed; boundary=m\r\n"
                b"\r\n"
                b"--m\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level3\r\n"
                b"\r\n"
                b"deep body\r\n"
                b"--m\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"sibling\r\n"
                b"--m--\r\n"
            ),
            "1.1.MIME": (b"Subject: level1\r\nContent-Type: message/rfc822\r\n\r\n"),
            "1.1.HEADER": (b"Subject: level2\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"),
            "1.1.TEXT": (
                b"--m\r\n"
                b"Content-Type: message/rfc822\r\n"
                b"\r\n"
                b"Subject: level3\r\n"
                b"\r\n"
                b"deep body\r\n"
                b"--m\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"sibling\r\n"
                b"--m--\r\n"
            ),
            "1.1.1": (b"Subject: level3\r\n\r\ndeep body"),
            "1.1.1.MIME": (b"Content-Type: message/rfc822\r\n\r\n"),
            "1.1.1.HEADER": (b"Subject: level3\r\n\r\n"),
            "1.1.1.TEXT": (b"deep body"),
            "1.1.1.1": (b"deep body"),
            "1.1.1.1.MIME": (b"Subject: level3\r\n\r\n"),
            "1.1.2": (b"sibling"),
            "1.1.2.MIME": (b"Content-Type: text/plain\r\n\r\n"),
        },
    ),
    (
        "unterminated",
        b"From: a@b\r\n"
        b"Subject: unterminated multipart\r\n"
        b"Content-Type: multipart/mixed; boundary=zz\r\n"
        b"\r\n"
        b"--zz\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"first\r\n"
        b"--zz\r\n"
        b"Content-Type: text/html\r\n"
        b"\r\n"
        b"second runs to end\r\n",
        {
            "HEADER": (
                b"From: a@b\r\n"
                b"Subject: unterminated multipart\r\n"
                b"Content-Type: multipart/mixed; boundary=zz\r\n"
                b"\r\n"
            ),
            "TEXT": (
                b"--zz\r\n"
                b"Content-Type: text/plain\r\n"
                b"\r\n"
                b"first\r\n"
                b"--zz\r\n"
                b"Content-Type: text/html\r\n"
                b"\r\n"
                b"second runs to end\r\n"
            ),
            "1": (b"first"),
            "1.MIME": (b"Content-Type: text/plain\r\n\r\n"),
            "2": (b"second runs to end\r\n"),
            "2.MIME": (b"Content-Type: text/html\r\n\r\n"),
        },
    ),
    (
        "boundary_prefix",
        b"Subject: bp\r\n"
        b"Content-Type: multipart/mixed; boundary=a\r\n"
        b"\r\n"
        b"--a\r\n"
        b"Content-Type: multipart/mixed; boundary=ab\r\n"
        b"\r\n"
        b"--ab\r\n"
        b"\r\n"
        b"x\r\n"
        b"--ab--\r\n"
        b"--a\r\n"
        b"\r\n"
        b"y\r\n"
        b"--a--\r\n",
        {
            "HEADER": (b"Subject: bp\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"),
            "TEXT": (
                b"--a\r\n"
                b"Content-Type: multipart/mixed; boundary=ab\r\n"
                b"\r\n"
                b"--ab\r\n"
                b"\r\n"
                b"x\r\n"
                b"--ab--\r\n"
                b"--a\r\n"
                b"\r\n"
                b"y\r\n"
                b"--a--\r\n"
            ),
            "1": (b"--ab\r\n\r\nx\r\n--ab--\r\n"),
            "1.MIME": (b"Content-Type: multipart/mixed; boundary=ab\r\n\r\n"),
            "1.1": (b"x"),
            "1.1.MIME": (b"\r\n"),
            "2": (b"y"),
            "2.MIME": (b"\r\n"),
        },
    ),
    (
        "nofinalcrlf",
        b"From: a@b.c\r\nSubject: no final crlf\r\n\r\nbody without crlf",
        {
            "HEADER": (b"From: a@b.c\r\nSubject: no final crlf\r\n\r\n"),
            "TEXT": (b"body without crlf"),
            "1": (b"body without crlf"),
            "1.MIME": (b"From: a@b.c\r\nSubject: no final crlf\r\n\r\n"),
        },
    ),
]

# Where our offsets deliberately differ from Dovecot's: (case, section) -> (reason, ours).
SECTION_DEVIATIONS: dict[tuple[str, str], tuple[str, bytes]] = {
    ("boundary_prefix", "1"): (
        "the CRLF before the outer delimiter belongs to it (RFC 2046 §5.1.1): a nested multipart "
        "ends with its close-delimiter; Dovecot keeps the CRLF in the part",
        b"--ab\r\n\r\nx\r\n--ab--",
    ),
}


def _section(data: bytes, info: MessageInfo, key: str) -> bytes | None:
    *numbers, last = key.split(".")
    if last.isdigit():
        numbers.append(last)
        spec = ""
    else:
        spec = last
    found = section_range(info.body, [int(n) for n in numbers], spec)
    return None if found is None else data[found[0] : found[1]]


@pytest.mark.parametrize(
    ("name", "message", "sections"), DOVECOT_SECTIONS, ids=[c[0] for c in DOVECOT_SECTIONS]
)
def test_sections_match_dovecot(name: str, message: bytes, sections: dict[str, bytes]) -> None:
    info = parse_message(message)
    numbered = {".".join(map(str, path)) for path, _ in walk(info.body)}
    assert numbered == {k for k in sections if k[-1].isdigit()}
    for key, dovecot in sections.items():
        expected = SECTION_DEVIATIONS.get((name, key), ("", dovecot))[1]
        assert _section(message, info, key) == expected, key
    _check_invariants(message, info)


# --- RFC 3501 §6.4.5's own numbering example ---------------------------------------------------

RFC3501_EXAMPLE = (
    b"Subject: section numbering\r\n"
    b"Content-Type: multipart/mixed; boundary=A\r\n"
    b"\r\n"
    b"--A\r\nContent-Type: text/plain\r\n\r\n1\r\n"
    b"--A\r\nContent-Type: application/octet-stream\r\n\r\n2\r\n"
    b"--A\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: part 3\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\n3.1\r\n"
    b"--B\r\nContent-Type: application/octet-stream\r\n\r\n3.2\r\n"
    b"--B--\r\n"
    b"--A\r\nContent-Type: multipart/mixed; boundary=C\r\n\r\n"
    b"--C\r\nContent-Type: image/gif\r\n\r\n4.1\r\n"
    b"--C\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: part 4.2\r\nContent-Type: multipart/mixed; boundary=D\r\n\r\n"
    b"--D\r\nContent-Type: text/plain\r\n\r\n4.2.1\r\n"
    b"--D\r\nContent-Type: multipart/alternative; boundary=E\r\n\r\n"
    b"--E\r\nContent-Type: text/plain\r\n\r\n4.2.2.1\r\n"
    b"--E\r\nContent-Type: text/richtext\r\n\r\n4.2.2.2\r\n"
    b"--E--\r\n"
    b"--D--\r\n"
    b"--C--\r\n"
    b"--A--\r\n"
)


def test_rfc3501_section_numbering() -> None:
    info = parse_message(RFC3501_EXAMPLE)
    numbering = [
        (".".join(map(str, path)), f"{p.content_type}/{p.subtype}") for path, p in walk(info.body)
    ]
    assert numbering == [
        ("1", "text/plain"),
        ("2", "application/octet-stream"),
        ("3", "message/rfc822"),
        ("3.1", "text/plain"),
        ("3.2", "application/octet-stream"),
        ("4", "multipart/mixed"),
        ("4.1", "image/gif"),
        ("4.2", "message/rfc822"),
        ("4.2.1", "text/plain"),
        ("4.2.2", "multipart/alternative"),
        ("4.2.2.1", "text/plain"),
        ("4.2.2.2", "text/richtext"),
    ]
    data = RFC3501_EXAMPLE
    for path, part in walk(info.body):
        if not part.parts and part.message is None:  # every leaf's body is its own number
            assert data[part.body_start : part.end] == ".".join(map(str, path)).encode()
    assert _section(data, info, "3.HEADER") == (
        b"Subject: part 3\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
    )
    assert _section(data, info, "4.2.HEADER") == (
        b"Subject: part 4.2\r\nContent-Type: multipart/mixed; boundary=D\r\n\r\n"
    )
    assert _section(data, info, "4.1.MIME") == b"Content-Type: image/gif\r\n\r\n"
    assert (_section(data, info, "3.TEXT") or b"").startswith(b"--B\r\n")
    assert (_section(data, info, "3.TEXT") or b"").endswith(b"--B--")
    header_end = data.index(b"\r\n\r\n") + 4
    assert section_range(info.body, [], "HEADER") == (0, header_end)
    assert section_range(info.body, [], "text") == (header_end, len(data))
    assert section_range(info.body, [], "") == (0, len(data))
    for missing in ([5], [0], [1, 1], [4, 3], [4, 2, 2, 3], [3, 3], [2, 1]):
        assert find_part(info.body, missing) is None
        assert section_range(info.body, missing) is None
    assert find_part(info.body, []) is info.body
    assert section_range(info.body, [], "MIME") is None
    assert section_range(info.body, [2], "HEADER") is None  # not a message/rfc822 part
    assert section_range(info.body, [3], "BOGUS") is None


def test_non_multipart_numbering() -> None:
    data = b"Subject: x\r\n\r\nbody\r\n"
    info = parse_message(data)
    assert [path for path, _ in walk(info.body)] == [(1,)]
    assert find_part(info.body, [1]) is info.body
    assert find_part(info.body, [2]) is None
    assert find_part(info.body, [1, 1]) is None
    assert section_range(info.body, [1]) == (14, len(data))
    assert section_range(info.body, [1], "MIME") == (0, 14)

    # A message that *is* a message/rfc822: 1 is its body, 1.1 the encapsulated body.
    data = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner\r\n"
    info = parse_message(data)
    assert [path for path, _ in walk(info.body)] == [(1,), (1, 1)]
    inner = find_part(info.body, [1, 1])
    assert inner is not None and data[inner.body_start : inner.end] == b"inner\r\n"
    assert _section(data, info, "1.HEADER") == b"Subject: in\r\n\r\n"
    assert _section(data, info, "1.TEXT") == b"inner\r\n"


# --- what parse_message reports ----------------------------------------------------------------


def test_full_message_fields() -> None:
    data = (
        b'From: "Alice Example" <alice@example.org>, =?utf-8?q?B=C3=B6b?= <bob@example.org>\r\n'
        b"To: team: carol@example.com, dave@example.com;\r\n"
        b"Subject: =?UTF-8?B?SGVsbG8g4pyI?=\r\n  =?UTF-8?Q?_world?=\r\n"
        b"Date: Tue, 1 Apr 2025 10:00:00 +0200 (CEST)\r\n"
        b"Message-ID: <one@example.org>\r\n"
        b"In-Reply-To: <zero@example.org> (comment) <other@x>\r\n"
        b"References: <root@example.org>\r\n <zero@example.org>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Hi   there,\r\n\r\n  see you\ttomorrow.\r\n"
    )
    info = parse_message(data)
    assert info.size == len(data)
    assert info.subject == "Hello ✈ world"
    assert info.from_display == "Alice Example <alice@example.org>, Böb <bob@example.org>"
    assert info.date == datetime(2025, 4, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    assert info.message_id == "one@example.org"
    assert info.in_reply_to == "zero@example.org"
    assert info.references == ("root@example.org", "zero@example.org")
    assert info.snippet == "Hi there, see you tomorrow."
    assert not info.has_attachment
    env = info.envelope
    assert env.subject == "=?UTF-8?B?SGVsbG8g4pyI?=  =?UTF-8?Q?_world?="
    assert env.date == "Tue, 1 Apr 2025 10:00:00 +0200 (CEST)"
    assert env.message_id == "<one@example.org>"
    assert env.sender == env.reply_to == env.from_  # RFC 3501: default to From
    assert env.to == (
        Address(None, None, "team", None),
        Address(None, None, "carol", "example.com"),
        Address(None, None, "dave", "example.com"),
        Address(None, None, None, None),
    )
    assert env.cc == env.bcc == ()
    assert info.body.lines == 3 and info.body.size == len(
        b"Hi   there,\r\n\r\n  see you\ttomorrow.\r\n"
    )


def test_missing_and_odd_header_values() -> None:
    info = parse_message(b"Date: not a date\r\nMessage-ID: bare@id extra\r\nIn-Reply-To:\r\n\r\n")
    assert info.date is None
    assert info.message_id == "bare@id"
    assert info.in_reply_to is None
    assert info.envelope.in_reply_to == ""  # present but empty: "" rather than NIL
    assert info.subject == "" and info.from_display == "" and info.references == ()
    assert parse_message(b"Date: Thu, 1 Jan 2015 00:00:00 -0000\r\n\r\n").date == datetime(
        2015, 1, 1, tzinfo=UTC
    )
    assert parse_message(b"Date: Thu, 1 Jan 99999 00:00:00 +0000\r\n\r\n").date is None
    # 8-bit header bytes that are not UTF-8 are replaced, never fatal.
    info = parse_message(b"Subject: caf\xe9 \xff\r\nFrom: \xe9 <a@b>\r\n\r\n")
    assert info.subject == "caf\ufffd \ufffd"
    assert info.from_display == "\ufffd <a@b>"
    # A group-only From, a route-only Sender, an address list with nothing in it.
    info = parse_message(b"From: undisclosed-recipients:;\r\nSender: ,\r\n\r\n")
    assert info.from_display == ""
    assert info.envelope.sender == info.envelope.from_


def _leaf(ctype: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"Content-Type: " + ctype + b"\r\n" + extra + b"\r\n" + body


def _multipart(subtype: bytes, *parts: bytes, boundary: bytes = b"zz") -> bytes:
    out = b"Content-Type: multipart/" + subtype + b"; boundary=" + boundary + b"\r\n\r\n"
    for p in parts:
        out += b"--" + boundary + b"\r\n" + p + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_snippet_prefers_plain_then_html() -> None:
    alt = _multipart(
        b"alternative",
        _leaf(b"text/html", b"<p>HTML</p>"),
        _leaf(
            b"text/plain; charset=iso-8859-1",
            b"Caf=E9\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
        ),
    )
    assert parse_message(alt).snippet == "Café"
    html_only = _multipart(
        b"mixed",
        _leaf(b"text/plain", b"attached text", b"Content-Disposition: attachment\r\n"),
        _leaf(b"text/plain", b""),
        _leaf(
            b"text/html; charset=utf-8",
            base64.encodebytes(
                b"<html><head><title>t</title><style>p{}</style></head><body>"
                b"<!-- hidden --><script>var x = '<p>';</script><p>Fish &amp; chips</p>"
                b"<br/>caf&eacute;</body></html>"
            ),
            b"Content-Transfer-Encoding: base64\r\n",
        ),
    )
    info = parse_message(html_only)
    assert info.snippet == "Fish & chips café"
    assert info.has_attachment
    assert parse_message(_multipart(b"mixed", _leaf(b"image/png", b"x"))).snippet == ""


def test_snippet_is_capped_and_reads_a_bounded_prefix() -> None:
    words = b"word " * 100_000
    info = parse_message(b"Content-Type: text/plain\r\n\r\n" + words)
    assert info.snippet == ("word " * 40).strip()
    assert len(info.snippet) <= 200
    cut = Limits(snippet_chars=1000, snippet_scan_bytes=7)
    assert parse_message(b"\r\n" + words, cut).snippet == "word wo"
    # A multi-byte character cut by the scan limit is dropped, not shown as U+FFFD.
    assert (
        parse_message(b"Content-Type: text/plain; charset=utf-8\r\n\r\naaaaaa\xc3\xa9", cut).snippet
        == "aaaaaa"
    )


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (_multipart(b"alternative", _leaf(b"text/plain", b"a"), _leaf(b"text/html", b"b")), False),
        (
            _multipart(
                b"mixed", _leaf(b"text/plain", b"a", b"Content-Disposition: attachment\r\n")
            ),
            True,
        ),
        (
            _multipart(b"related", _leaf(b"image/png", b"a", b"Content-Disposition: inline\r\n")),
            False,
        ),
        (_multipart(b"mixed", _leaf(b"image/png", b"a")), True),
        (_multipart(b"mixed", _leaf(b"message/rfc822", b"Subject: x\r\n\r\ny")), True),
        (_leaf(b"application/pdf", b"%PDF"), True),
        (b"Subject: plain\r\n\r\ntext", False),
    ],
)
def test_has_attachment(message: bytes, expected: bool) -> None:
    assert parse_message(message).has_attachment is expected


def test_part_fields_and_helpers() -> None:
    data = _multipart(
        b"mixed",
        _leaf(
            b'application/pdf; name="fallback.pdf"',
            b"JVBERi0=",
            b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
            b"Content-Transfer-Encoding: BASE64 (comment)\r\n"
            b"Content-ID: <id1@x>\r\nContent-Description: Le CV\r\n"
            b"Content-Language: fr (French), en\r\nContent-Location: cv.pdf\r\n"
            b"Content-MD5: bWQ1\r\n",
        ),
        _leaf(b"image/gif; name=only-name.gif", b"R0lG"),
        _leaf(b"image/gif", b"R0lG", b"Content-Disposition: inline; size=3\r\n"),
    )
    root = parse_message(data).body
    pdf, gif, bare = root.parts
    assert (pdf.content_type, pdf.subtype, pdf.encoding) == ("application", "pdf", "base64")
    assert pdf.filename == "résumé.pdf"
    assert pdf.param("name") == "fallback.pdf" and pdf.param("nope") is None
    assert pdf.content_id == "<id1@x>" and pdf.description == "Le CV"
    assert pdf.language == ("fr", "en") and pdf.location == "cv.pdf" and pdf.md5 == "bWQ1"
    assert pdf.lines is None and pdf.size == 8
    assert gif.filename == "only-name.gif"
    assert bare.filename is None
    assert bare.disposition == ("inline", (("size", "3"),))
    assert root.is_multipart and not pdf.is_multipart
    assert root.param("boundary") == "zz" and root.lines is None


def test_defaults_rfc2045_and_digest() -> None:
    info = parse_message(b"Subject: none\r\n\r\nx")
    assert (info.body.content_type, info.body.subtype) == ("text", "plain")
    assert info.body.params == (("charset", "us-ascii"),)
    assert info.body.encoding == "7bit"
    digest = _multipart(
        b"digest", b"\r\nSubject: in digest\r\n\r\nbody", _leaf(b"text/plain", b"t")
    )
    first, second = parse_message(digest).body.parts
    assert (first.content_type, first.subtype, first.params) == ("message", "rfc822", ())
    assert first.message is not None and first.message[0].subject == "in digest"
    assert (second.content_type, second.params) == ("text", (("charset", "us-ascii"),))
    # Invalid Content-Type (RFC 2045 §5.2) and a disposition without a type.
    info = parse_message(b"Content-Type: text\r\nContent-Disposition: ; filename=x\r\n\r\nx")
    assert (info.body.content_type, info.body.subtype, info.body.disposition) == (
        "text",
        "plain",
        None,
    )


# --- malformed input ---------------------------------------------------------------------------


def test_multipart_without_usable_boundary_gets_one_empty_part() -> None:
    for header in (
        b"Content-Type: multipart/mixed\r\n",
        b"Content-Type: multipart/mixed; boundary=never\r\n",
        b'Content-Type: multipart/mixed; boundary=""\r\n',
    ):
        data = header + b"\r\nno boundary here\r\n"
        root = parse_message(data).body
        assert len(root.parts) == 1
        empty = root.parts[0]
        assert (empty.content_type, empty.size, empty.lines) == ("text", 0, 0)
        assert empty.start == empty.body_start == empty.end == len(data)
        assert (root.body_start, root.end) == (len(header) + 2, len(data))


def test_unterminated_multipart_runs_to_the_end() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=q\r\n\r\n"
        b"--q\r\n\r\none\r\n--q\r\n\r\ntwo, unterminated"
    )
    root = parse_message(data).body
    assert [data[p.body_start : p.end] for p in root.parts] == [b"one", b"two, unterminated"]


def test_header_without_blank_line_and_no_final_crlf() -> None:
    info = parse_message(b"Subject: only a header\r\nFrom: a@b.c")
    assert info.subject == "only a header"
    assert info.body.body_start == info.body.end == info.size
    info = parse_message(b"")
    assert info.size == 0 and info.body.size == 0 and info.subject == ""
    info = parse_message(b"\r\n\r\nbody only")
    assert info.body.body_start == 2 and info.envelope.subject is None


def test_lf_only_input() -> None:
    data = (
        b"Subject: lf\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: text/plain\n\none\ntwo\n--b\n\nthree\n--b--\n"
    )
    info = parse_message(data)
    assert info.subject == "lf"
    one, three = info.body.parts
    assert data[one.body_start : one.end] == b"one\ntwo" and one.lines == 1
    assert data[three.body_start : three.end] == b"three"
    assert data[one.start : one.body_start] == b"Content-Type: text/plain\n\n"


def test_outer_boundary_closes_an_unterminated_inner_multipart() -> None:
    data = _multipart(
        b"mixed",
        b"Content-Type: multipart/alternative; boundary=in\r\n\r\n--in\r\n\r\ninner, never closed",
        _leaf(b"text/plain", b"second"),
        boundary=b"out",
    )
    inner, second = parse_message(data).body.parts
    assert [data[p.body_start : p.end] for p in inner.parts] == [b"inner, never closed"]
    assert data[second.body_start : second.end] == b"second"


def test_boundary_rules() -> None:
    # Transport padding after the delimiter; a longer boundary sharing the prefix is not ours;
    # "--b--x" is not a close-delimiter; the delimiter may be the very first line.
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b \t\r\n\r\none\r\n--bb\r\n--b--x\r\n"
        b"--b\r\n\r\ntwo\r\n--b--   \r\nepilogue\r\n--b\r\nnot a part\r\n"
    )
    root = parse_message(data).body
    assert [data[p.body_start : p.end] for p in root.parts] == [b"one\r\n--bb\r\n--b--x", b"two"]
    # Back-to-back delimiters make empty parts; bare CR before a delimiter stays in the body.
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\nx\r\r\n--b--"
    first, second = parse_message(data).body.parts
    assert first.start == first.body_start == first.end
    assert data[second.body_start : second.end] == b"x\r"


# --- limits ------------------------------------------------------------------------------------


def _nested(levels: int) -> bytes:
    inner = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    for i in range(levels):
        inner = _multipart(b"mixed", inner, boundary=b"n%d" % i)
    return inner


def test_depth_cap_makes_opaque_leaves() -> None:
    data = _nested(10)
    root = parse_message(data, Limits(max_depth=3)).body
    chain = [root]
    while chain[-1].parts:
        chain.append(chain[-1].parts[0])
    assert [p.content_type for p in chain] == ["multipart"] * 3 + ["application"]
    assert chain[-1].subtype == "octet-stream" and chain[-1].size > 0
    # Encapsulated messages count as levels too.
    msg = b"Content-Type: message/rfc822\r\n\r\n" * 5 + b"Subject: deepest\r\n\r\nx"
    root = parse_message(msg, Limits(max_depth=2)).body
    assert root.message is not None and root.message[1].message is not None
    assert root.message[1].message[1].content_type == "application"
    assert parse_message(_nested(200)).body.parts  # the default cap (32) handles deep input


def test_part_count_cap() -> None:
    data = _multipart(b"mixed", *[_leaf(b"text/plain", b"%d" % i) for i in range(10)])
    root = parse_message(data, Limits(max_parts=5)).body
    assert [data[p.body_start : p.end] for p in root.parts] == [b"0", b"1", b"2", b"3"]
    # When the cap is already reached, a nested multipart or message becomes an opaque leaf.
    data = _multipart(
        b"mixed", _leaf(b"text/plain", b"a"), _nested(1), _leaf(b"message/rfc822", b"\r\nx")
    )
    root = parse_message(data, Limits(max_parts=2)).body
    assert [p.content_type for p in root.parts] == ["text"]
    root = parse_message(data, Limits(max_parts=3)).body
    assert [p.content_type for p in root.parts] == ["text", "application"]
    many = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n\r\nx\r\n" * 100_000
    assert len(parse_message(many).body.parts) == 1999  # default cap: 2000 parts in all


def test_header_caps() -> None:
    fields = b"".join(b"X-%d: y\r\n" % i for i in range(10))
    assert parse_message(fields + b"Subject: s\r\n\r\n", Limits(max_header_fields=10)).subject == ""
    assert (
        parse_message(fields + b"Subject: s\r\n\r\n", Limits(max_header_fields=11)).subject == "s"
    )
    assert parse_message(fields + b"Subject: s\r\n\r\n", Limits(max_header_bytes=60)).subject == ""
    info = parse_message(b"Subject: " + b"x" * 100 + b"\r\n\r\n", Limits(max_field_value=10))
    assert info.subject == "x" * 10
    many = b"To: " + b", ".join(b"u%d@x" % i for i in range(20)) + b"\r\n\r\n"
    assert len(parse_message(many, Limits(max_addresses=3)).envelope.to) == 3
    refs = b"References: " + b" ".join(b"<r%d@x>" % i for i in range(300)) + b"\r\n\r\n"
    info = parse_message(refs)
    assert len(info.references) == 100 and info.references[-1] == "r299@x"
    long_boundary = b"b" * 1001
    data = (
        b"Content-Type: multipart/mixed; boundary=" + long_boundary + b"\r\n\r\n--" + long_boundary
    )
    assert parse_message(data).body.parts[0].size == 0
    hostile = b"X: y\r\n" * 500_000 + b"Subject: late\r\n\r\nbody"
    info = parse_message(hostile)
    assert info.subject == "" and info.body.body_start == len(hostile) - 4


# --- JSON cache ----------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    for data in (RFC3501_EXAMPLE, _nested(3), b"", b"Date: Tue, 1 Apr 2025 10:00:00 +0200\r\n\r\n"):
        info = parse_message(data)
        again = MessageInfo.from_json(info.to_json())
        assert again == info
        assert again.to_json() == info.to_json()


def test_json_rejects_what_it_did_not_write() -> None:
    for bad in (b"{}", b'{"v": 99}', b"[]", b"not json", b'{"v": 1, "size": 1}'):
        with pytest.raises(ValueError):
            MessageInfo.from_json(bad)


# --- speed ---------------------------------------------------------------------------------------


def test_thirty_megabyte_attachment_is_fast() -> None:
    payload = base64.encodebytes(os.urandom(22_500_000)).replace(b"\n", b"\r\n")
    data = _multipart(
        b"mixed",
        _leaf(b"text/plain", b"see attached"),
        _leaf(b"application/octet-stream", payload, b"Content-Transfer-Encoding: base64\r\n"),
        boundary=b"----=_Part_0_123.456",
    )
    assert len(data) > 30_000_000
    started = time.perf_counter()
    info = parse_message(data)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, elapsed  # typically ~0.03 s; a generous bound, not a benchmark
    attachment = info.body.parts[1]
    assert data[attachment.body_start : attachment.end] == payload
    assert info.snippet == "see attached" and info.has_attachment


# --- properties ---------------------------------------------------------------------------------


def _all_parts(part: BodyPart) -> list[BodyPart]:
    out = [part]
    for child in part.parts:
        out += _all_parts(child)
    if part.message is not None:
        out += _all_parts(part.message[1])
    return out


def _check_invariants(data: bytes, info: MessageInfo) -> None:
    assert info.size == len(data)
    assert info.body.start == 0 and info.body.end == len(data)
    for p in _all_parts(info.body):
        assert 0 <= p.start <= p.body_start <= p.end <= len(data)
        assert p.size == p.end - p.body_start
        if p.lines is not None:
            assert p.lines == data.count(b"\n", p.body_start, p.end)
        if p.content_type == "multipart":
            assert p.parts
        previous_end = p.body_start
        for child in p.parts:
            assert previous_end <= child.start and child.end <= p.end
            previous_end = child.end
        if p.message is not None:
            inner = p.message[1]
            assert (inner.start, inner.end) == (p.body_start, p.end)
    assert MessageInfo.from_json(info.to_json()) == info


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=2000))
def test_never_crashes_on_arbitrary_bytes(data: bytes) -> None:
    _check_invariants(data, parse_message(data))


_alphabet = st.sampled_from(
    [b"\r\n", b"\n", b"\r", b"--", b"-", b"b", b"a", b":", b" ", b";", b"=", b'"', b"\xff", b"x"]
)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: multipart/mixed; boundary=b\r\n",
                b'Content-Type: multipart/digest; boundary="a"\r\n',
                b"Content-Type: message/rfc822\r\n",
                b"Content-Type: text/plain; charset=utf-8\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"Content-Disposition: attachment; filename*0*=utf-8''%C3; filename*1*=%A9\r\n",
                b"\r\n",
                b"--b\r\n",
                b"--b--\r\n",
                b"--a\r\n",
                b"--a--",
                b"Subject: =?utf-8?b?w6k=?=\r\n",
                b"From: a <b@c>, (\r\n",
                b"body\r\n",
            ]
        )
        | st.lists(_alphabet, max_size=8).map(b"".join),
        max_size=40,
    ).map(b"".join)
)
def test_never_crashes_on_mime_shaped_noise(data: bytes) -> None:
    _check_invariants(data, parse_message(data))


@st.composite
def _tree(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, list[bytes]]:
    """A random MIME entity and the bodies of its leaves in section order."""
    kind = draw(st.sampled_from(["leaf", "multi", "message"] if depth < 4 else ["leaf"]))
    if kind == "multi":
        boundary = b"=_b%d_" % depth + draw(st.sampled_from([b"", b"x y", b"'()+_,-./:=?"]))
        children = draw(st.lists(_tree(depth + 1), max_size=3))
        preamble = draw(st.sampled_from([b"", b"preamble\r\n", b"\r\n"]))
        body = preamble + b"".join(
            b"--" + boundary + draw(st.sampled_from([b"", b" ", b"\t "])) + b"\r\n" + c + b"\r\n"
            for c, _ in children
        )
        body += (
            b"--" + boundary + b"--" + draw(st.sampled_from([b"", b"\r\n", b"\r\nepilogue\r\n"]))
        )
        header = b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n'
        leaves = [leaf for _, sub in children for leaf in sub] or [b""]
        return header + b"\r\n" + body, leaves
    if kind == "message":
        inner, leaves = draw(_tree(depth + 1))
        return b"Content-Type: message/rfc822\r\n\r\n" + inner, leaves
    header = draw(
        st.sampled_from([b"", b"Content-Type: text/plain\r\n", b"Content-Type: image/png\r\n"])
    )
    tokens = st.sampled_from(
        [b"x", b"", b"-", b"--", b"--=", b"a--=_b0_", b"\r", b" ", b"\xc3\xa9"]
    )
    body = b"\r\n".join(draw(st.lists(tokens, max_size=5)))
    return header + b"\r\n" + body, [body]


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_tree())
def test_leaf_offsets_slice_out_exactly_the_bodies(tree: tuple[bytes, list[bytes]]) -> None:
    data, bodies = tree
    info = parse_message(data)
    leaves = [p for _, p in walk(info.body) if not p.parts and p.message is None]
    assert [data[p.body_start : p.end] for p in leaves] == bodies
    _check_invariants(data, info)


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["delete", "duplicate", "insert", "lf", "truncate"]),
            st.integers(0, 10_000),
            st.integers(0, 200),
            st.sampled_from(
                [
                    b"--A\r\n",
                    b"--B--\r\n",
                    b"\r\n\r\n",
                    b"--",
                    b"\n",
                    b"Content-Type: multipart/mixed; boundary=A\r\n",
                ]
            ),
        ),
        max_size=6,
    )
)
def test_structurally_mutated_multipart_never_crashes(
    edits: list[tuple[str, int, int, bytes]],
) -> None:
    data = RFC3501_EXAMPLE
    for op, at, length, text in edits:
        at %= len(data) + 1
        if op == "delete":
            data = data[:at] + data[at + length :]
        elif op == "duplicate":
            data = data[:at] + data[at : at + length] * 2 + data[at + length :]
        elif op == "insert":
            data = data[:at] + text + data[at:]
        elif op == "lf":
            data = data[:at] + data[at : at + length].replace(b"\r\n", b"\n") + data[at + length :]
        else:
            data = data[:at]
    _check_invariants(data, parse_message(data))
