"""``python -m bot`` runs the ``byokbot`` command."""

import sys

from bot.cli import main

sys.exit(main())
