"""python -m agegender.report: the bias report (agegender.report.bias)."""

import sys

from .bias import main

sys.exit(main())
