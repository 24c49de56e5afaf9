"""`python -m petseg.data.check`: run the data check's command line with its exit status."""

import sys

from petseg.data.check.cli import main

if __name__ == "__main__":
    sys.exit(main())
