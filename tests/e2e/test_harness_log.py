"""
Tests for L{tests.e2e.harness.readRotatedLog}.
"""

from __future__ import annotations

import os

from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.harness import readRotatedLog


class ReadRotatedLogTests(SynchronousTestCase):
    """
    A gateway's log read whole across twistd's rotations, so that an
    offset taken before a rotation still points into the same text.
    """

    def test_acrossRotations(self) -> None:
        """
        What a L{LogFile} wrote before and after two rotations reads back
        in order, as one text.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "gateway.log")
        log = LogFile.fromFullPath(path, rotateLength=10)
        written = []
        for i in range(5):
            line = f"line {i} of the log\\n"
            log.write(line)
            log.flush()
            written.append(line)
        log.close()
        self.assertTrue(os.path.exists(path + ".2"))
        self.assertEqual(readRotatedLog(path), "".join(written))

    def test_noFile(self) -> None:
        """
        No log yet reads as empty.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        self.assertEqual(readRotatedLog(os.path.join(folder, "gateway.log")), "")
