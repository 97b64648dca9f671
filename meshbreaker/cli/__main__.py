"""`python -m meshbreaker.cli`: the `meshbreaker` command."""

import sys

from meshbreaker.cli.entry import main

sys.exit(main())
