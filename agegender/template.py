"""python -m agegender.template runs agegender.data.template."""

import sys

from .data.template import main

if __name__ == "__main__":
    sys.exit(main())
