"""Launching the experiments: the catalogue of shipped experiments and their reports (by name),
running one (runner), sweeping a grid of them on Ray (sweep), and where they run (placement).
The layer above the experiments and the reporting layer; the command line builds on it."""
