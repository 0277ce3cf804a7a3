"""The campaign dashboard: a read-only web view of a store while a run writes it.

``views`` turns a store into the page's data (JSON) and plots (SVG);
``server`` serves them (``hts dashboard``); ``html`` writes the same views
as one static file (``hts report --html``).  Everything the page needs is
in ``static/``, served by the package: no CDN, works offline.
"""
