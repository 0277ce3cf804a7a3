# GPAW build configuration (read by GPAW's setup.py through GPAW_CONFIG).
#
# Serial build against Debian's libxc, OpenBLAS and FFTW (apt: libxc-dev
# libopenblas-dev libfftw3-dev). MPI is off on purpose: `hts` runs GPAW as one
# process per job on small cells, and an MPI compiler found on PATH (e.g. the
# PyPI mpich wheel) would otherwise make GPAW build against an MPI it is not
# launched with. Clusters that want parallel GPAW use their own module build.
mpi = False
compiler = 'g++'
libraries = ['xc', 'openblas', 'fftw3']
fftw = True
scalapack = False
