"""``python -m lightning_autoq``: same as the ``autoq`` command."""

from lightning_autoq.cli import main

if __name__ == "__main__":
    main()
