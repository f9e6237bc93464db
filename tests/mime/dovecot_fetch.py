"""Record Dovecot's FETCH output for a message, to add expected values to the MIME/IMAP tests.

Not a test (pytest does not collect it) and not needed by the tests: they hold the recorded
strings. Runs Dovecot's ``imap`` binary in PREAUTH mode on a throw-away one-message Maildir
under a temporary directory, as the unprivileged ``nobody`` user (Dovecot refuses root), and
prints the FETCH response's data items. Needs root for ``setpriv``.

    python tests/mime/dovecot_fetch.py message.eml '(ENVELOPE BODYSTRUCTURE BODY)'
    python tests/mime/dovecot_fetch.py message.eml '(BODY.PEEK[1.MIME] BODY.PEEK[2.TEXT])'
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IMAP = "/usr/lib/dovecot/imap"

CONFIG = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols =
ssl = no
mail_location = maildir:{base}/mail/Maildir
passdb {{
  driver = static
  args = password=unused
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/mail
}}
"""


def fetch(message: bytes, items: str) -> bytes:
    """``FETCH 1 items`` on a mailbox holding only ``message``; returns the data items."""
    base = Path(tempfile.mkdtemp(prefix="lb-dovecot-"))
    try:
        for sub in ("run", "state", "mail/Maildir/cur", "mail/Maildir/new", "mail/Maildir/tmp"):
            (base / sub).mkdir(parents=True)
        (base / "dovecot.conf").write_text(CONFIG.format(base=base))
        (base / f"mail/Maildir/cur/1.M1P1.lb,S={len(message)}:2,").write_bytes(message)
        base.chmod(0o755)
        subprocess.run(["chown", "-R", "nobody:nogroup", str(base)], check=True)
        script = f"a SELECT INBOX\r\nb FETCH 1 {items}\r\nc LOGOUT\r\n".encode()
        out = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "env",
                "USER=test",
                f"HOME={base}/mail",
                IMAP,
                "-c",
                str(base / "dovecot.conf"),
            ],
            input=script,
            capture_output=True,
            check=True,
        ).stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)
    start = out.index(b"* 1 FETCH (") + len(b"* 1 FETCH (")
    end = out.index(b"\r\nb OK", start)
    return out[start : end - 1]


if __name__ == "__main__":
    data = Path(sys.argv[1]).read_bytes()
    wanted = sys.argv[2] if len(sys.argv) > 2 else "(ENVELOPE BODYSTRUCTURE BODY)"
    sys.stdout.buffer.write(fetch(data, wanted) + b"\n")
