"""Everything written under data/runs/: the per-run append-only files and their DuckDB views (runs.py), the
shared export (export.py), standings across runs (standings.py), and jobs as processes (jobs.py)."""
