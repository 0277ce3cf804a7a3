"""Creating the store's arrays and handling zarr's metadata files: the zarr-specific details.

Kept apart from the writer's logic so that everything that knows how zarr
lays a group out on disk (``zarr.json``, consolidated metadata, numpy's
StringDType for ``str`` arrays) sits in one small module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hts.store.schema import ATOM_VARS, CANDIDATE_VARS, FIXED_SIZES, UPDATE_VARS, schema_variables

__all__ = [
    "add_missing",
    "consolidate",
    "create_array",
    "create_layout",
    "create_store",
    "drop_consolidated",
    "plain",
    "root_attributes",
]

CAND_CHUNK = 4096
ATOM_CHUNK = 32768


def plain(values) -> np.ndarray:
    """Numpy StringDType (zarr's ``str``) → object strings, which callers compare and join freely."""
    values = np.asarray(values)
    if values.dtype.kind in "TU":
        return values.astype(object)
    return values


def create_array(group, name, dims, dtype, fill, doc, n_stages) -> None:
    """One empty variable, chunked along its first dimension."""
    sizes = {**FIXED_SIZES, "stage": n_stages, "candidate": 0, "atom": 0, "update": 0}
    shape = tuple(sizes[d] for d in dims)
    chunk0 = ATOM_CHUNK if dims[0] == "atom" else CAND_CHUNK
    arr = group.create_array(
        name,
        shape=shape,
        chunks=(chunk0, *shape[1:]),
        dtype=dtype,
        fill_value=fill,
        dimension_names=list(dims),
    )
    arr.attrs["description"] = doc


def create_layout(path: Path, stages: list[str]):
    """A new, empty store: every variable, the ``stage`` coordinate and the stage models."""
    import zarr

    group = zarr.open_group(path, mode="w", zarr_format=3)
    for name, (dims, dtype, fill, doc) in CANDIDATE_VARS.items():
        create_array(group, name, ("candidate", *dims), dtype, fill, doc, len(stages))
    for name, (dims, dtype, fill, doc) in ATOM_VARS.items():
        create_array(group, name, ("atom", *dims), dtype, fill, doc, len(stages))
    for name, (dims, dtype, fill, doc) in UPDATE_VARS.items():
        create_array(group, name, ("update", *dims), dtype, fill, doc, len(stages))
    coord = group.create_array(
        "stage", shape=(len(stages),), dtype=str, dimension_names=["stage"], fill_value=""
    )
    coord[:] = np.array(stages, dtype=object)
    for name in ("stage_model", "stage_model_version"):
        a = group.create_array(
            name, shape=(len(stages),), dtype=str, dimension_names=["stage"], fill_value=""
        )
        a.attrs["description"] = "model (and version) that produced each stage's values"
    return group


def add_missing(group, stages: list[str], lengths: dict[str, int]) -> None:
    """Variables added to the schema since a store was written, filled to its committed lengths.

    The fill is written, chunk by chunk, not left implicit: a store of layout 2
    has every committed chunk on disk, and :func:`hts.store.verify.verify`
    would take an absent one for damage and refuse to resume the store.  The
    root attribute ``variables`` then lists them all (see :func:`create_store`).
    """
    for dim, table in (("candidate", CANDIDATE_VARS), ("update", UPDATE_VARS)):
        for name, (dims, dtype, fill, doc) in table.items():
            if name in group:
                continue
            create_array(group, name, (dim, *dims), dtype, fill, doc, len(stages))
            arr = group[name].with_config({"write_empty_chunks": True})
            n = lengths[dim]
            arr.resize((n, *arr.shape[1:]))
            step = arr.chunks[0]
            for start in range(0, n, step):
                stop = min(n, start + step)
                block = np.full(
                    (stop - start, *arr.shape[1:]), fill, dtype=object if dtype is str else dtype
                )
                arr[start:stop] = block
    if sorted(group.attrs.get("variables", [])) != sorted(schema_variables()):
        group.attrs["variables"] = schema_variables()


def consolidate(path: Path) -> None:
    """Consolidated metadata (a finished store): ``xr.open_zarr`` then opens it quietly and fast."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not part of the v3 spec yet": xarray reads it fine
        zarr.consolidate_metadata(str(path))


def create_store(path: Path, stages: list[str], attrs: dict):
    """A new store at ``path``, made whole beside it and renamed into place (atomic).

    A creation killed half-way leaves only ``.<name>.creating`` (cleared by the
    next one), never a half-made store; an empty directory at ``path`` is
    replaced.  ``FileExistsError`` when ``path`` is a file or holds anything.
    """
    import shutil

    import zarr

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "a directory that is not an hts store" if path.is_dir() else "a file"
        raise FileExistsError(17, f"is {what}", str(path))
    tmp = path.with_name(f".{path.name}.creating")
    shutil.rmtree(tmp, ignore_errors=True)
    # the variables it holds, so that `hts verify` can tell a lost one from one it predates
    create_layout(tmp, stages).attrs.update({**attrs, "variables": schema_variables()})
    tmp.rename(path)
    return zarr.open_group(path, mode="r+", use_consolidated=False)


def drop_consolidated(path: Path) -> None:
    """Consolidated metadata would go stale while rows are appended: remove it first."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    if meta.pop("consolidated_metadata", None) is not None:
        tmp = meta_path.with_name("zarr.json.tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(meta_path)


def root_attributes(path: Path) -> dict:
    """The root group's attributes straight from ``zarr.json`` (one small file, no zarr import).

    The writer replaces that file atomically at each commit, so one read is a
    consistent ledger.  Raises ``OSError``/``ValueError`` when it is absent or
    caught mid-replace on a filesystem without atomic renames.
    """
    meta = json.loads((Path(path) / "zarr.json").read_text())
    return dict(meta.get("attributes", {}))
