"""``python -m semmae`` (also what ``torchrun -m semmae`` runs)."""

from semmae.cli import entry

entry()
