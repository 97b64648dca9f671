"""`python -m examples.banking`: the demo."""

from examples.banking.demo import main

raise SystemExit(main())
