"""python -m agegender.soup runs agegender.train.soup."""

import sys

from .train.soup import main

if __name__ == "__main__":
    sys.exit(main())
