"""``python -m crisp`` runs the same command as ``crisp``."""

from crisp.cli.daemon import main

raise SystemExit(main())
