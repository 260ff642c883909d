"""python -m agegender.shift runs agegender.fairness.shift."""

import sys

from .fairness.shift import main

if __name__ == "__main__":
    sys.exit(main())
