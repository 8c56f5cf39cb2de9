"""What a bulk run has finished, kept beside its output so an interrupted run can resume.

Results are written in input order. After flushing the output (and errors) file, the run
rewrites ``OUTPUT.progress.json`` atomically (write a temporary file, then rename): how many
input records are final, where the next one starts in the input, and how long the output and
errors files were at that moment. A resumed run cuts both files back to those lengths (whatever
was written after the last checkpoint is dropped and redone) and reads the input from the
recorded position, so every input record ends up in the output, or the errors file, exactly once.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

VERSION = 1


@dataclass
class Checkpoint:
    input: str  # resolved path of the input file
    input_size: int  # a different size means a different input: refuse to resume
    model: str
    top_n: int | None
    records_done: int = 0
    resume_at: int = 0  # the input position after the last final record (bytes or rows)
    line: int = 0  # that record's line (row) number
    output_bytes: int = 0
    errors_bytes: int = 0
    failed: int = 0
    pairs: int = 0
    cache_hits: int = 0
    complete: bool = False
    version: int = VERSION

    @staticmethod
    def path_for(output: Path) -> Path:
        return output.with_name(output.name + ".progress.json")

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w") as file:
            json.dump(asdict(self), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def mismatch(self, other: Checkpoint) -> str | None:
        """Why a run with ``other``'s settings cannot continue this one, or None."""
        for name in ("input", "input_size", "model", "top_n"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} was {getattr(self, name)!r}, now {getattr(other, name)!r}"
        return None
