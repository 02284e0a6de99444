"""`python -m tflm COMMAND ...`, the same as the `tflm` console script."""

import sys

from tflm.cli import main

sys.exit(main())
