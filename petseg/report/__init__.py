"""`python -m petseg.report <sweep folder> [--out DIR]`: compare the runs of a multirun sweep.

Reads each job's `status.json`, `.hydra/` and `csv/metrics.csv` (any of them may be missing) and
writes `report.md` and `report.csv` (one row per job, best val mIoU first, failed jobs last) and
`report.png` (val mIoU per epoch; best val mIoU vs parameters). PATH may also be a single run
folder or a folder holding several runs (`outputs/<date>`).
"""

from petseg.report.cli import main, report
from petseg.report.jobs import JobRow, collect, read_job
from petseg.report.plot import draw_report
from petseg.report.tables import markdown_table, write_csv, write_markdown

__all__ = [
    "JobRow",
    "collect",
    "draw_report",
    "main",
    "markdown_table",
    "read_job",
    "report",
    "write_csv",
    "write_markdown",
]
