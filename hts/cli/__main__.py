"""``python -m hts.cli``: the ``hts`` command."""

from hts.cli import main

main()
