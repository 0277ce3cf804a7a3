"""Stage functions: batches in, typed records out; no execution engine in sight."""
