"""Versions of the records that travel through Redis between releases: job messages (producers
write, workers read), results (workers write, producers read) and alias records (operators
write, producers read).

Each record carries ``format: "MAJOR.MINOR"``. A minor release only adds optional fields whose
defaults keep the old meaning, so a reader accepts a newer minor: it keeps the fields it does not
know (a job moved to the cpu lane carries them on) and says so once per record kind and version.
A newer major is refused with both versions and the upgrade order, never half-read: a refused job
fails with that reason and its worker serves the next one. A record without the field was
written before formats had versions: it reads as 1.0, today's format.

During a rolling upgrade, readers go first: workers before producers (they read jobs), producers
and gateways before ``rerankq models alias`` writes a newer alias record (README: "Upgrading a
fleet").
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from rerankq.errors import IncompatibleFormat

log = logging.getLogger("rerankq.wire_format")

FORMAT_FIELD: Final = "format"
_VERSION = re.compile(r"^(\d{1,4})\.(\d{1,4})$")
_UNVERSIONED: Final = "1.0"  # records written before formats had versions


@dataclass
class RecordFormat:
    """What this release writes for one kind of record, and how it reads others' records."""

    kind: str  # "job message", "result", "alias record": named in every message
    version: str  # MAJOR.MINOR this release writes
    upgrade_first: str  # who must run this release before a newer major can be read
    _noted: set[tuple[str, frozenset[str]]] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, record: Mapping[str, Any], known_fields: Iterable[str]) -> None:
        """Raise ``IncompatibleFormat`` for a major this release cannot read; note unknown fields once."""
        found = record.get(FORMAT_FIELD, _UNVERSIONED)
        own_major, own_minor = _parse(self.version)
        major, minor = _parse(found)
        if major < 0:
            raise IncompatibleFormat(self.kind, repr(found), f"MAJOR.MINOR {self.version}", "not a rerankq record")
        if major != own_major:
            hint = self.upgrade_first if major > own_major else "upgrade the writer to a release that writes this major"
            raise IncompatibleFormat(self.kind, str(found), self.version, hint)
        unknown = frozenset(record) - set(known_fields)
        if unknown or minor > own_minor:
            self._note_once(str(found), unknown)

    def _note_once(self, found: str, unknown: frozenset[str]) -> None:
        with self._lock:
            if (found, unknown) in self._noted:
                return
            self._noted.add((found, unknown))
        names = ", ".join(sorted(unknown)) or "none"
        log.warning(
            "%s format %s is newer than this release's %s (or carries fields it does not know: %s); "
            "reading the fields it knows",
            self.kind,
            found,
            self.version,
            names,
        )


def _parse(version: Any) -> tuple[int, int]:
    """(major, minor); (-1, -1) for anything that is not a MAJOR.MINOR string."""
    match = _VERSION.match(version) if isinstance(version, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


JOB_FORMAT = RecordFormat("job message", "1.1", "upgrade every worker before the producers and gateways")
RESULT_FORMAT = RecordFormat("result", "1.3", "upgrade the producers and gateways before the workers")
ALIAS_FORMAT = RecordFormat("alias record", "1.0", "upgrade the producers and gateways before `rerankq models alias`")
