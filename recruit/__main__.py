"""``python -m recruit`` runs the CLI."""

import sys

from recruit.cli import main

sys.exit(main())
