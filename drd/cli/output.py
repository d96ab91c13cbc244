"""How commands write their results to stdout: JSON for machines (`--json`)."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    # One write: json.dump writes each token on its own (350,000 writes for a list of 5,000
    # backups, most of `drd list --json`'s time).
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
