"""`python -m petseg.data.check data.root=... [--write-exclude] [--workers N]`: find bad data files.

Decodes every image and trimap of annotations/trainval.txt and test.txt (in threads) and lists each
fault per file: breaking ones (faults.BREAKING: setup stops on them) and ones the reader handles.
Exit 0 when no breaking fault is left outside annotations/exclude.txt, exactly when setup will not
stop; 1 otherwise; 2, one line, without a dataset or split list. --write-exclude lists the breaking
samples in exclude.txt. Results are cached per file by (path, size, mtime_ns) (scanner.cache_path).
Modules: faults (kinds, report), scanner (decoding, cache), exclude (names setup keeps), cli.
"""

from petseg.data.check.cli import main
from petseg.data.check.exclude import (
    MAX_LINES,
    check_split_overlap,
    exclude_path,
    read_exclude,
    usable_names,
    write_exclude,
)
from petseg.data.check.faults import (
    BREAKING,
    EXCLUDE,
    RGB_MODES,
    Fault,
    Report,
    judge,
    sample_files,
    split_overlap,
)
from petseg.data.check.scanner import (
    CACHE_NAME,
    CACHE_VERSION,
    cache_path,
    cache_place,
    inspect_file,
    load_cache,
    save_cache,
    scan,
    writable,
    write_atomic,
)

__all__ = [
    "BREAKING",
    "CACHE_NAME",
    "CACHE_VERSION",
    "EXCLUDE",
    "MAX_LINES",
    "RGB_MODES",
    "Fault",
    "Report",
    "cache_path",
    "cache_place",
    "check_split_overlap",
    "exclude_path",
    "inspect_file",
    "judge",
    "load_cache",
    "main",
    "read_exclude",
    "sample_files",
    "save_cache",
    "scan",
    "split_overlap",
    "usable_names",
    "writable",
    "write_atomic",
    "write_exclude",
]
