"""``python -m semmae`` (also what ``torchrun -m semmae`` runs)."""

import sys

from semmae.cli.main import main

sys.exit(main())
