"""python -m agegender.audit runs agegender.review.audit."""

import sys

from .review.audit import main

if __name__ == "__main__":
    sys.exit(main())
