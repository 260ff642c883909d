"""python -m agegender.embed runs agegender.evaluation.embed."""

import sys

from .evaluation.embed import main

if __name__ == "__main__":
    sys.exit(main())
