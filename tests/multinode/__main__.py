"""`python -m tests.multinode up`: the rig, started by hand."""

import sys

from tests.multinode import main

sys.exit(main())
