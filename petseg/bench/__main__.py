"""`python -m petseg.bench`: runs the bench's command line."""

from petseg.bench.cli import main

if __name__ == "__main__":
    main()
