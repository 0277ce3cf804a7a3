# GPAW build configuration (read by GPAW's setup.py through GPAW_CONFIG).
#
# Built against Debian's libxc, OpenBLAS and FFTW (apt: libxc-dev libopenblas-dev
# libfftw3-dev) and with MPI from the environment's own MPICH (the PyPI `mpich` wheel
# that mpi4py uses too), so `mpiexec -n N python -m hts.dft.job DIR` runs one GPAW
# calculation on N ranks; a run without a launcher is an ordinary serial run.
# GPAW compiles as C++: the MPI compiler wrapper must be mpicxx (mpicc fails on
# <algorithm>).  GPAW_MPICXX names it; `make setup` points it at .venv/bin/mpicxx
# after installing mpich first.  Without one, GPAW is built serial.
import os
import shutil

_mpicxx = os.environ.get("GPAW_MPICXX") or shutil.which("mpicxx")
mpi = bool(_mpicxx)
compiler = _mpicxx or "g++"
libraries = ["xc", "openblas", "fftw3"]
fftw = True
scalapack = False
