"""``python -m tdpmmu``: the same command as the ``tdpmmu`` console script."""

from tdpmmu.cli import main

if __name__ == "__main__":
    main()
