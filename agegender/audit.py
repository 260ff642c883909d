"""python -m agegender.audit runs agegender.review.audit_run."""

import sys

from .review.audit_run import main

if __name__ == "__main__":
    sys.exit(main())
