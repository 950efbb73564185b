"""``python -m duplex``: the same as the ``duplex`` command."""

from duplex.cli import main

if __name__ == "__main__":
    main()
