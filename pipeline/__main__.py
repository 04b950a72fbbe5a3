"""``python -m pipeline`` runs the ``itmflow`` command line."""

from pipeline.cli import main

main()
