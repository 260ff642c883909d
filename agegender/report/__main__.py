"""python -m agegender.report: the bias report (agegender.report.command)."""

import sys

from .command import main

sys.exit(main())
