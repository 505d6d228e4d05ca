"""Per-seed results aggregated into the papers' tables (CSV / LaTeX / Markdown)."""
