"""``care-bench``: a paper's whole evaluation of several checkpoints in one command.

A suite (``bench/suites/<name>.yaml``) names the tables of a paper it fills; the protocols,
seed counts and datasets come from those tables' layout (``tables.layout.TABLES``). ``plan``
lists what is finished, partial or to run and what it costs in GPU-hours from measured
throughputs (``bench/throughputs.json``); ``run`` runs every remaining seed through the
protocols' own runners (``transfer/run_*.py``), here or on Slurm; ``status`` shows every
run's state; the tables and ``report.html`` are rebuilt as seeds finish. The package sits
above the protocol families: no family and nothing in ``common`` imports it.
"""
