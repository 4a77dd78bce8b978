"""Per-architecture rating cache shared by the whole-path raters (SPOS's top-1, dna_cell's relative L1).

``ratings/paths.jsonl`` gets one line per rated architecture with the rater's fingerprint (checkpoint step and
rating options); a line with another fingerprint is ignored (stale), a line torn by a kill is skipped, so a rerun
rates only what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ['PathCache']


class PathCache:
    """``read()`` the values of this fingerprint (read once, then kept); ``add`` one value (written by ``write``)."""

    def __init__(self, path: Path, fingerprint: Callable[[], str], field: str) -> None:
        self.path, self.fingerprint, self.field = Path(path), fingerprint, field
        self._values: dict[str, float] | None = None

    def read(self) -> dict[str, float]:
        if self._values is None:
            self._values = {}
            fp = self.fingerprint()
            if self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by a kill
                    if row.get('fingerprint') == fp:
                        self._values[row['key']] = float(row[self.field])
        return self._values

    def add(self, key: str, arch: Sequence[int], value: float, write: bool = True, **extra: Any) -> None:
        """Keep ``value`` for ``key``; append its line when ``write`` (the main process only)."""
        self.read()[key] = value
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            row = {'fingerprint': self.fingerprint(), 'key': key, 'arch': list(arch), self.field: value, **extra}
            with open(self.path, 'a') as f:
                f.write(json.dumps(row) + '\n')
