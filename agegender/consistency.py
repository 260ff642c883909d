"""python -m agegender.consistency runs agegender.evaluation.consistency."""

import sys

from .evaluation.consistency import main

if __name__ == "__main__":
    sys.exit(main())
