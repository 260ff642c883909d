"""python -m agegender.pack runs agegender.data.pack."""

import sys

from .data.pack import main

if __name__ == "__main__":
    sys.exit(main())
