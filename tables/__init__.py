"""Per-seed results aggregated into the papers' tables (CSV / LaTeX / Markdown), and
``load_runs(root, ...)``: every finished seed as one tidy pandas DataFrame."""


def __getattr__(name: str):
    if name == "load_runs":  # lazily: pandas is imported only by those who use it
        from tables.frame import load_runs

        return load_runs
    raise AttributeError(name)
