"""`python -m dicomnode`: the same command line as the `dicomnode` console script."""

from dicomnode.node.cli import main

if __name__ == "__main__":
    main()
