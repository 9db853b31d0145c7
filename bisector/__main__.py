"""`python -m bisector`: the same command line as `bisector`."""

from bisector.cli import run

if __name__ == "__main__":
    run()
