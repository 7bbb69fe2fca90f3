# -*- test-case-name: tests.test_xmpp_s2s -*-
"""
Secrets kept in files: made once (random, mode 0600), then the same for
every restart and every process that shares the file.
"""

from __future__ import annotations

import os

from twisted.python.filepath import FilePath

__all__ = ["loadSecret"]


def loadSecret(path: FilePath[str], size: int = 32) -> bytes:
    """
    Read a persistent secret, creating it (C{size} random bytes, mode 0600)
    if the file does not exist. Several processes may race to create it:
    the file appears whole or not at all (written aside, then linked into
    place), and every process reads the one that won.

    @raise ValueError: If the file exists but is empty.
    """
    if not path.exists():
        temporary = path.sibling(f".{path.basename()}.{os.getpid()}.tmp")
        fd = os.open(temporary.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(size))
            try:
                os.link(temporary.path, path.path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary.path)
    secret = path.getContent()
    if not secret:
        raise ValueError(f"{path.path} is empty: delete it to have a new secret made")
    return secret
