"""`python -m petseg.data.check data.root=... [--write-exclude] [--workers N]`: find bad data files.

Decodes every image and trimap named in annotations/trainval.txt and test.txt (a thread pool: PIL
releases the GIL while it decodes) and prints each fault per file, in two groups:

- breaking, training stops on them: `unreadable`, `truncated`, `unsupported-mode` (no faithful RGB
  conversion, e.g. 16-bit), `size-mismatch` (image vs trimap), `trimap-values` (outside {1, 2, 3}),
  `missing-image`, `missing-trimap` (a split list names a sample with no file);
- handled by the reader, listed for information: `format-mismatch` (e.g. PNG or GIF bytes in a .jpg:
  PIL opens files by content) and `mode` (grayscale, RGBA, palette, CMYK: converted to RGB).

Exit status: 0 when no breaking fault is left outside annotations/exclude.txt (handled faults alone
give 0), which is exactly when `PetDataModule.setup` will not stop on this data; 1 when breaking
faults remain; 2, with one line, when data.root holds no dataset, a split list is missing or empty,
or the exclude list cannot be written. `--write-exclude` (re)writes annotations/exclude.txt with the
name of every sample that has a breaking fault; PetDataModule skips the names listed there, so the
same run then exits 0.

Per-file results are cached by (path, size, mtime_ns) in <dataset>/.petseg-check-cache.json (in
~/.cache/petseg/ when the dataset folder is read-only), so a second check or `setup` over unchanged
files decodes nothing.

Modules, one job each: `faults` (fault kinds, a sample's faults, the report), `scanner` (decoding
in threads, the scan cache), `exclude` (annotations/exclude.txt and the names setup keeps), `cli`
(the command line; `__main__` runs it).
"""

from petseg.data.check.cli import main
from petseg.data.check.exclude import (
    MAX_LINES,
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
    "exclude_path",
    "inspect_file",
    "judge",
    "load_cache",
    "main",
    "read_exclude",
    "sample_files",
    "save_cache",
    "scan",
    "usable_names",
    "writable",
    "write_atomic",
    "write_exclude",
]
