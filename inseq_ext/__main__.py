"""``python -m inseq_ext``: the ``inseq-ext`` command line (see :mod:`inseq_ext.cli`)."""

from .cli import main

raise SystemExit(main())
