"""python -m agegender.modelcard runs agegender.report.modelcard."""

import sys

from .report.modelcard import main

if __name__ == "__main__":
    sys.exit(main())
