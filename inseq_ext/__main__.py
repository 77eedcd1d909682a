"""``python -m inseq_ext``: the ``inseq-ext`` command line (parser :mod:`inseq_ext_cli`, handlers :mod:`.cli`).

This imports the package (and inseq) before parsing; ``inseq-ext`` and ``python -m inseq_ext_cli`` parse first.
"""

from inseq_ext_cli import main

raise SystemExit(main())
