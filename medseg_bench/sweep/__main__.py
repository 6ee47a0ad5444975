"""`python -m medseg_bench.sweep --spec JSON ...`: one run in its own process (a local launcher worker)."""

import sys

from medseg_bench.sweep.worker import main

sys.exit(main())
