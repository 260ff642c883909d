"""python -m agegender.leakage runs agegender.evaluation.leakage_command."""

import sys

from .evaluation.leakage_command import main

if __name__ == "__main__":
    sys.exit(main())
