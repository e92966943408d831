"""``python -m darknetpy.cli``: the same as the ``darknetpy`` console script."""

import sys

from .main import main

sys.exit(main())
