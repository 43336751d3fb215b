"""Fixtures of the ring tests."""

from __future__ import annotations

import os
import random

import pytest


@pytest.fixture
def name():
    """A ring name of this test alone; its segment is removed afterwards."""
    n = f"strata-test-{os.getpid()}-{random.randrange(1 << 30)}"
    yield n
    try:
        os.unlink("/dev/shm/" + n)
    except FileNotFoundError:
        pass
