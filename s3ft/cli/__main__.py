"""`python -m s3ft.cli ...`: the same as the `s3ft` console script."""

import sys

from s3ft.cli.main import main

sys.exit(main())
