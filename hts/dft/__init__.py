"""DFT through atomate2: the codes' makers and the per-job runner.

Each DFT job runs in its own process (``python -m hts.dft.job DIR``), behind
the site's MPI launcher where the code is parallel, so a crashing or hanging
code never takes a worker down and a walltime can be enforced.  The job keeps
atomate2's task documents in a file-backed jobflow ``JobStore`` inside its
directory; no MongoDB is needed.
"""
