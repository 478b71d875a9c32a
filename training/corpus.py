"""The training corpus: the Python standard library's top-level modules.

Every machine with Python has it, and code makes multi-token prediction's
strengths visible (long predictable runs: indentation, keywords, names that
repeat).  Files are taken in sorted order; a file goes to the held-out split
when a hash of its name says so (about 1 in 12), so the split does not depend on
the order or the number of files.  The corpus is written as one text per file;
documents are separated by the end-of-text token at training time.

The stdlib differs between Python versions, so the manifest records the
interpreter version and a digest of the corpus: a re-run on another version
trains on other text and says so.
"""
from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELD_OUT_EVERY = 12
MAX_FILE_BYTES = 200_000     # a handful of huge generated tables (e.g. pydoc_data) are mostly not code


@dataclass(frozen=True)
class Corpus:
    train: list[tuple[str, str]]      # (file name, text)
    held_out: list[tuple[str, str]]
    python: str
    digest: str

    @property
    def train_bytes(self) -> int:
        return sum(len(t.encode()) for _, t in self.train)

    @property
    def held_out_bytes(self) -> int:
        return sum(len(t.encode()) for _, t in self.held_out)


def is_held_out(name: str) -> bool:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") % HELD_OUT_EVERY == 0


def load_corpus(root: str | Path | None = None) -> Corpus:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    train, held = [], []
    h = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        raw = path.read_bytes()
        if len(raw) > MAX_FILE_BYTES:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        text = text.replace("\r\n", "\n")
        h.update(path.name.encode() + b"\0" + text.encode() + b"\0")
        (held if is_held_out(path.name) else train).append((path.name, text))
    if not train or not held:
        raise RuntimeError(f"no usable corpus under {root}")
    return Corpus(train, held, sys.version.split()[0], h.hexdigest())
