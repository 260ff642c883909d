"""python -m agegender.sweep runs agegender.evaluation.sweep."""

import sys

from .evaluation.sweep import main

if __name__ == "__main__":
    sys.exit(main())
