"""hts: high-throughput screening of crystalline materials.

Importing the package (or its CLI) loads no torch, Parsl, zarr or model
weights and touches no files; every heavy import happens where it is used.
"""

__version__ = "0.1.0"
