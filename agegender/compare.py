"""python -m agegender.compare runs agegender.fairness.compare."""

import sys

from .fairness.compare import main

if __name__ == "__main__":
    sys.exit(main())
