"""Science on finished structures: what a person checks a result against.

Modules here take structures and return numbers, tables and figures; they
never import the execution engine or the store, so they run in a notebook or
a test on their own.  Heavy libraries (pymatgen, matplotlib) load when a
function is called, not on import.
"""
