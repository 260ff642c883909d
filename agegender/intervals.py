"""python -m agegender.intervals runs agegender.evaluation.intervals."""

import sys

from .evaluation.intervals import main

if __name__ == "__main__":
    sys.exit(main())
