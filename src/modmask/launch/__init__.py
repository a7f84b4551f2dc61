"""Launching the experiments: running one (runner), sweeping a grid of them on Ray (sweep), and
where they run (placement). The layer above the experiments; the command line builds on it."""
