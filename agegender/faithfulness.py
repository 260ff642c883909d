"""python -m agegender.faithfulness runs agegender.evaluation.faithfulness_command."""

import sys

from .evaluation.faithfulness_command import main

if __name__ == "__main__":
    sys.exit(main())
