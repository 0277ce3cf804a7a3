"""Summaries and exports of a store, for ``hts status``, ``hts export`` and the dashboard.

Split by job, each module small enough to read at once:

- :mod:`hts.report.summary`: the funnel, the best candidates, MLIP against DFT
  (what ``hts status``, ``hts report`` and the dashboard show);
- :mod:`hts.report.export`: ``hts export``'s structures, CSV and funnel plot;
- :mod:`hts.report.lab`: for the lab, powder XRD, space group and conventional
  cell of the validated (or final) candidates.

The HTML page of ``hts report --html`` is the dashboard's, written by
:mod:`hts.dashboard.html`.  Everything here reads committed rows only, so it is
safe while a run is writing.  The names below are re-exported so that
``from hts.report import …`` keeps working as it did when this was one module.
"""

from __future__ import annotations

from hts.report.export import export_store, plot_dft_parity, plot_store
from hts.report.lab import (
    XRD_INDEX_COLUMNS,
    characterisation_entry,
    characterise_row,
    export_xrd,
    final_candidates,
)
from hts.report.summary import (
    BEST_VARS,
    DFT_ONLY,
    TEACHER_ONLY,
    best_entries,
    dft_parity,
    keep_threshold,
    stability_disagreements,
    stage_table,
    summarize,
)

__all__ = [
    "BEST_VARS",
    "DFT_ONLY",
    "TEACHER_ONLY",
    "XRD_INDEX_COLUMNS",
    "best_entries",
    "characterisation_entry",
    "characterise_row",
    "dft_parity",
    "export_store",
    "export_xrd",
    "final_candidates",
    "keep_threshold",
    "plot_dft_parity",
    "plot_store",
    "stability_disagreements",
    "stage_table",
    "summarize",
]
