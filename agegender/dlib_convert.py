"""python -m agegender.dlib_convert runs agegender.models.dlib_convert."""

import sys

from .models.dlib_convert import main

if __name__ == "__main__":
    sys.exit(main())
