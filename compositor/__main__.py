"""``python -m compositor`` is the ``compositor`` command."""

import sys

from compositor.cli import main

sys.exit(main())
