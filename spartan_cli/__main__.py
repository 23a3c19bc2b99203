"""``python -m spartan_cli``: the same as the ``spartan`` command."""

import sys

from spartan_cli.main import main

sys.exit(main())
