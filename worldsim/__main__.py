"""``python -m worldsim`` is the ``worldsim`` command."""

import sys

from worldsim.cli import main

sys.exit(main())
