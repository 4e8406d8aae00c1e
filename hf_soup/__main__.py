"""``python -m hf_soup`` is the ``hf-soup`` command."""

import sys

from .cli import main

sys.exit(main())
