"""`run_study`: a modularity study of your own model, with its report (see runs.study)."""

from __future__ import annotations

from .runs.study import Function, run_study as _run_study


def run_study(model, functions, out, **options) -> dict:
    """Train one mask per function on the frozen `model`, analyse them, write `out/report.md`.

    functions: a list of `Function(name, train_batches, eval_batches, loss, metric)`.
    options: seed, compare (names of the masks to compare), progress, mask (a MaskConfig) and its
    fields (steps, k, beta, lr, biases, parameters, path, compiled, ...). Returns the results dict.
    """
    from .reporting.study import write_study_report  # matplotlib only when a report is written

    results = _run_study(model, functions, out, **options)
    write_study_report(out, results)
    return results


__all__ = ["Function", "run_study"]
