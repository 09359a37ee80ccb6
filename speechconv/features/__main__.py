"""``python -m speechconv.features INPUT... --out DIR``: the command line of :mod:`speechconv.features.cli`."""

from speechconv.features.cli import main

raise SystemExit(main())
