"""`python -m petseg.report`: run the report CLI and exit with its status."""

import sys

from petseg.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
