"""`python -m bench.server --worker N`: one client worker process (started by the pool)."""

from __future__ import annotations

import sys

from .clients import worker_cli

sys.exit(worker_cli())
