"""``python -m drifting.cli ...`` (and ``torchrun -m drifting.cli ...``): the ``drifting`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
