"""`python -m p2pcache`: the same as the `p2pcache` command."""

import sys

from p2pcache.cli import main

sys.exit(main())
