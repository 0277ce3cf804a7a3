"""The campaign's Zarr store: schema, single writer with a resume ledger, and readers.

Writers use :class:`Store`; readers use :func:`read_ledger`,
:class:`StoreReader` or :func:`open_dataset`.  Nothing outside this package
knows how zarr lays the store out.
"""

from __future__ import annotations

from hts.store.counters import Counters
from hts.store.lock import StoreError, StoreLockedError
from hts.store.reader import StoreReader, expand_ranges, open_dataset, read_ledger
from hts.store.verify import Damage, verify
from hts.store.writer import Row, StageUpdate, Store, StoreDamagedError, StoreMismatchError

__all__ = [
    "Counters",
    "Row",
    "StageUpdate",
    "Store",
    "Damage",
    "StoreDamagedError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreReader",
    "expand_ranges",
    "open_dataset",
    "read_ledger",
    "structure_of",
    "verify",
]


def structure_of(ds, i: int):
    """The stored (relaxed) structure of row ``i`` as ASE Atoms."""
    from ase import Atoms

    s, n = int(ds.atom_start[i]), int(ds.n_atoms[i])
    return Atoms(
        numbers=ds.species[s : s + n].values.astype(int),
        positions=ds.positions[s : s + n].values,
        cell=ds.cell[i].values,
        pbc=True,
    )
