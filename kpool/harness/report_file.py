"""Atomic file writes, and the report kept as a file beside the tables.

`kpool report DIR` prints the markdown report of a results directory. Made
from the tables it needs pandas, NumPy and scipy.special (about a second to
import on a 2-core CPU); so every command that writes the summary (`kpool
run`, `kpool merge`, and `kpool report` when it had to recompute) also
writes the report to `report.md`, headed by a fingerprint of what it was
made from: the runs and epochs tables, the directory's `config.yaml` (its
`report.baseline`), the code that makes reports, and the versions of the
libraries that compute it. `kpool report` prints the file only when the
fingerprint still matches, so an edited, added or removed table, or a new
kpool, gives a recomputed report, never a stale one.

This module imports nothing beyond the standard library.
"""

import contextlib
import hashlib
import importlib.metadata
import os
import pathlib
import tempfile

RUNS_PREFIX = "runs"
EPOCHS_PREFIX = "epochs"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.md"

# The modules whose code decides a report's text, beside this one.
_REPORT_CODE = ("results.py", "statistics.py")
_REPORT_LIBRARIES = ("numpy", "pandas", "scipy")
_HEADER = "<!-- kpool report of sha256:{} (delete this file to remake it) -->"


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Opens a temporary sibling of `path`; renames it over `path` on exit.

    The temporary name starts with a dot and ends in `.tmp`, so readers that
    glob `runs*.csv` never pick up a half-written file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory):
    # Makes the rename itself durable; not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def runs_tables(directory):
    """The directory's `runs*.csv`, sorted by name."""
    return sorted(pathlib.Path(directory).glob(f"{RUNS_PREFIX}*.csv"))


def epochs_table(runs_path):
    """The epochs table written together with a runs table."""
    runs_path = pathlib.Path(runs_path)
    suffix = runs_path.name[len(RUNS_PREFIX) :]
    return runs_path.with_name(EPOCHS_PREFIX + suffix)


def fingerprint(directory):
    """SHA-256 of everything `kpool report DIR`'s text depends on."""
    directory = pathlib.Path(directory)
    digest = hashlib.sha256()

    def add(label, data):
        # Length-prefixed, so no two different inputs hash alike.
        for part in (label.encode(), data):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)

    code = pathlib.Path(__file__).parent
    for name in (pathlib.Path(__file__).name, *_REPORT_CODE):
        add(f"code:{name}", (code / name).read_bytes())
    for library in _REPORT_LIBRARIES:
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        add(f"library:{library}", version.encode())
    for runs in runs_tables(directory):
        add(f"table:{runs.name}", runs.read_bytes())
        epochs = epochs_table(runs)
        if epochs.is_file():
            add(f"table:{epochs.name}", epochs.read_bytes())
    config = directory / CONFIG_FILE
    if config.is_file():
        add(f"config:{CONFIG_FILE}", config.read_bytes())
    return digest.hexdigest()


def read_report(directory):
    """The text of `directory`'s report.md if it was made from what the
    directory holds now; None if it is missing, unreadable or stale."""
    try:
        header, _, text = (
            (pathlib.Path(directory) / REPORT_FILE)
            .read_text(encoding="utf-8")
            .partition("\n")
        )
    except (OSError, UnicodeDecodeError):
        return None
    if header != _HEADER.format(fingerprint(directory)):
        return None
    return text.removesuffix("\n")


def write_report(directory, text, stamp):
    """Writes `text` as `directory`'s report.md, headed by `stamp`: the
    `fingerprint` of the directory taken before its tables were read, so a
    table written meanwhile (another shard) leaves the file stale."""
    header = _HEADER.format(stamp)
    with atomic_open(pathlib.Path(directory) / REPORT_FILE) as f:
        f.write(f"{header}\n{text}\n")
