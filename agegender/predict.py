"""python -m agegender.predict runs agegender.explain.predict."""

import sys

from .explain.predict import main

if __name__ == "__main__":
    sys.exit(main())
