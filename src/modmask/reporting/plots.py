"""Figures for the reports: grouped bars, confusion grids, histograms, mask images, sweep lines,
curves over density.

Each function draws one of the figure kinds of the paper (its figures of masks, overlaps and removal) from plain
Python data (lists, dicts, numpy arrays; tensors are accepted and converted), writes a PNG
atomically and returns its path. Figures are built on `matplotlib.figure.Figure` directly, never
through pyplot, so no global figure state leaks between calls and no display is needed (Agg).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullFormatter

DPI = 120
# Pixel colours of the paper's mask visualisation (figure 7 in the spec), RGB in [0, 1].
MASK_COLORS = {"first": (1.0, 0.0, 0.0), "second": (0.0, 1.0, 0.0), "both": (0.0, 0.0, 1.0),
               "neither": (0.0, 0.0, 0.0), "full": (0.3, 0.3, 0.3)}


def _as_numpy(x) -> np.ndarray:
    """Array from lists, numpy or torch tensors (detached and moved to the CPU without importing torch)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout is the tight layout that also makes room for colour bars and outside legends.
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> Path:
    """Write `fig` as PNG to `path` via a temporary file, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        fig.clear()  # a Figure outside pyplot is freed with its last reference; clear drops artists now
    return path


def _check_lengths(what: str, values: dict | None, n: int, against: str) -> None:
    for name, v in (values or {}).items():
        if len(v) != n:
            raise ValueError(f"{what} {name!r} has {len(v)} values but there are {n} {against}")


def _wrap(label: str, width: int = 11) -> str:
    """A tick label on several lines, broken at spaces and after dots (tensor names)."""
    return "\n".join(textwrap.wrap(label.replace(".", ". "), width)).replace(". ", ".")


def bar_groups(path, groups: list[str], series: dict[str, list[float]],
               errors: dict[str, list[float]] | None = None, ylabel: str = "", title: str = "",
               ylim: tuple | None = None, log: bool = False) -> Path:
    """Grouped bar chart: one group per entry of `groups`, one bar per series in each group.

    `series[name]` and `errors[name]` (std, drawn as error bars) have one value per group.
    """
    _check_lengths("series", series, len(groups), "groups")
    _check_lengths("errors for", errors, len(groups), "groups")
    fig = _new_figure(max(5.0, 1.0 + 0.35 * len(groups) * max(len(series), 1)), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        err = None if errors is None or name not in errors else _as_numpy(errors[name])
        offset = (i - (len(series) - 1) / 2) * width
        ax.bar(x + offset, _as_numpy(values), width, yerr=err, capsize=3 if err is not None else 0,
               label=name)
    ax.set_xticks(x, [_wrap(g) for g in groups])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if series:
        # Outside the axes: accuracy bars fill every corner, so any inside spot hides some bar.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _color_limits(matrices, center_zero: bool) -> tuple[float, float]:
    """Shared (vmin, vmax) for all panels; symmetric around 0 when `center_zero` (differences)."""
    values = np.concatenate([_as_numpy(m).ravel().astype(float) for m in matrices])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (-1.0, 1.0) if center_zero else (0.0, 1.0)
    if center_zero:
        m = float(np.abs(values).max()) or 1.0  # all zeros would give an empty colour range
        return -m, m
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _cell_texts(mean: np.ndarray, std, fmt: str) -> np.ndarray:
    """Annotation per cell: "mean" or "mean ± std"."""
    std = None if std is None else _as_numpy(std)
    if std is not None and std.shape != mean.shape:
        raise ValueError(f"std has shape {std.shape} but the matrix has shape {mean.shape}")
    return np.array([[fmt.format(v) + ("" if std is None else " ± " + fmt.format(std[r, c]))
                      for c, v in enumerate(row)] for r, row in enumerate(mean)], dtype=object)


def confusion_grid(path, matrices: dict[str, np.ndarray], row_labels: list[str], col_labels: list[str],
                   stds: dict[str, np.ndarray] | None = None, title: str = "", fmt: str = "{:.1f}",
                   cmap: str = "viridis", center_zero: bool = False) -> Path:
    """One annotated heat map per entry of `matrices` (each [len(row_labels), len(col_labels)]).

    Cells show "mean ± std" when `stds` has the key. All panels share one colour scale so they can be
    compared; with `center_zero` it is symmetric around 0 and the default colormap becomes the
    diverging "RdBu_r" (for confusion differences, where the sign matters).
    """
    shape = (len(row_labels), len(col_labels))
    arrays = {k: _as_numpy(m).astype(float) for k, m in matrices.items()}
    for k, m in arrays.items():
        if m.shape != shape:
            raise ValueError(f"matrix {k!r} has shape {m.shape}, labels give {shape}")
    if center_zero and cmap == "viridis":
        cmap = "RdBu_r"
    vmin, vmax = _color_limits(arrays.values(), center_zero)
    norm = Normalize(vmin, vmax)
    texts = {k: _cell_texts(m, None if stds is None else stds.get(k), fmt) for k, m in arrays.items()}
    ncols = min(len(arrays), 3) or 1
    nrows = -(-len(arrays) // ncols) or 1
    fontsize, cell_h = (9, 0.45) if max(shape) <= 4 else (6, 0.4)
    # Cells are as wide as their longest annotation (about 0.6 em per character) so text never overlaps.
    longest = max((len(t) for ts in texts.values() for t in ts.ravel()), default=1)
    cell_w = max(cell_h, longest * 0.6 * fontsize / 72 + 0.1)
    panel_w, panel_h = 1.2 + cell_w * shape[1], 1.0 + cell_h * shape[0]
    fig = _new_figure(panel_w * ncols + 1.0, panel_h * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    image = None
    for ax, (name, m) in zip(axes, arrays.items()):
        image = ax.imshow(m, cmap=cmap, norm=norm, aspect="auto")
        for (r, c), v in np.ndenumerate(m):
            text = texts[name][r, c]
            # Dark cells get white text; luminance of the cell's own colour decides.
            red, green, blue, _ = image.cmap(norm(v))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(c, r, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")
        ax.set_xticks(range(shape[1]), col_labels, rotation=45 if shape[1] > 4 else 0, ha="right"
                      if shape[1] > 4 else "center")
        ax.set_yticks(range(shape[0]), row_labels)
        ax.set_title(name)
    for ax in axes[len(arrays):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(arrays)]), shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def histogram(path, curves: dict[str, tuple[list[float], list[float]]], xlabel: str = "mask probability",
              log: bool = True, title: str = "") -> Path:
    """Step lines of densities from precomputed histograms: `curves[name] = (counts, bin_edges)`.

    len(bin_edges) must be len(counts) + 1. Density is counts / (total * bin width), so curves with
    different weight counts (FNN vs LSTM) are comparable.
    """
    fig = _new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for name, (counts, edges) in curves.items():
        counts, edges = _as_numpy(counts).astype(float), _as_numpy(edges).astype(float)
        if len(edges) != len(counts) + 1:
            raise ValueError(f"curve {name!r}: {len(edges)} bin edges for {len(counts)} counts")
        total = counts.sum()
        density = counts / (total * np.diff(edges)) if total > 0 else np.zeros_like(counts)
        ax.stairs(density, edges, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density (log scale)" if log else "density")
    ax.set_title(title)
    if curves:
        ax.legend()
    return _save(fig, path)


def mask_colors(masks: dict[str, np.ndarray], full: np.ndarray | None = None) -> np.ndarray:
    """RGB image [H, W, 3] in [0, 1] comparing two boolean masks of one weight matrix [H, W].

    Red: only the first mask; green: only the second; blue: both; dim grey: neither but in `full`;
    black: otherwise (dict order decides which mask is "first").
    """
    if len(masks) != 2:
        raise ValueError(f"mask_colors needs exactly two masks, got {len(masks)}: {list(masks)}")
    arrays = {k: _as_numpy(m) for k, m in masks.items()}
    if full is not None:
        arrays["full"] = _as_numpy(full)
    for k, m in arrays.items():
        if m.dtype != bool or m.ndim != 2:
            raise ValueError(f"mask {k!r} must be a 2-D boolean array, got {m.dtype} with shape {m.shape}")
    shapes = {k: m.shape for k, m in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"masks must have the same shape, got {shapes}")
    first, second = (arrays[k] for k in masks)
    out = np.zeros(first.shape + (3,))
    if full is not None:
        out[arrays["full"]] = MASK_COLORS["full"]
    # Later assignments win, so a weight in a mask is never shown as "full only".
    out[first & ~second] = MASK_COLORS["first"]
    out[second & ~first] = MASK_COLORS["second"]
    out[first & second] = MASK_COLORS["both"]
    return out


def mask_image(path, masks: dict[str, np.ndarray], full: np.ndarray | None = None, title: str = "") -> Path:
    """The paper's mask visualisation of one weight matrix [out, in]; colours as in `mask_colors`."""
    image = mask_colors(masks, full)
    height, width = image.shape[:2]
    aspect = float(np.clip(height / max(width, 1), 0.25, 4.0))
    fig = _new_figure(4.0 / min(aspect, 1.0) * 0.9 + 1.8, 4.0 * min(aspect, 1.0) + 0.6)
    ax = fig.add_subplot()
    ax.imshow(image, aspect="auto")
    # Axes count rows and columns of the weight matrix, so only whole-number ticks make sense.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    ax.set_title(title)
    a, b = list(masks)
    labels = [("first", f"only {a}"), ("second", f"only {b}"), ("both", "both"), ("neither", "neither")]
    if full is not None:
        labels.append(("full", "full mask only"))
    handles = [Patch(facecolor=MASK_COLORS[key], edgecolor="0.5", label=text) for key, text in labels]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def line_plot(path, x: list, series: dict[str, list[float]], errors: dict[str, list[float]] | None = None,
              xlabel: str = "", ylabel: str = "", title: str = "", logx: bool = False,
              marker: str = "o") -> Path:
    """Lines over a sweep (network size, β) with optional shaded ±std bands.

    Non-numeric `x` (e.g. "small", "big") is placed at equal spacing with the values as tick labels.
    """
    _check_lengths("series", series, len(x), "x values")
    _check_lengths("errors for", errors, len(x), "x values")
    categorical = not all(isinstance(v, (int, float, np.number)) for v in x)
    xs = np.arange(len(x)) if categorical else _as_numpy(x).astype(float)
    fig = _new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    for name, values in series.items():
        y = _as_numpy(values).astype(float)
        (line,) = ax.plot(xs, y, marker=marker, label=name)
        if errors is not None and name in errors:
            err = _as_numpy(errors[name]).astype(float)
            ax.fill_between(xs, y - err, y + err, color=line.get_color(), alpha=0.2, linewidth=0)
    if categorical:
        ax.set_xticks(xs, [str(v) for v in x])
    elif logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    return _save(fig, path)


def curve_panels(path, densities: list[float], panels: dict[str, dict[str, list[float]]],
                 errors: dict[str, dict[str, list[float]]] | None = None,
                 references: dict[str, float] | None = None, ylabel: str = "metric", title: str = "") -> Path:
    """Curves over density side by side: one panel per entry of `panels` (e.g. "sufficiency" and
    "necessity"), one line per method in each (`panels[panel][method]`: one value per density),
    density in % on a log axis. `errors[panel][method]` (std) are shaded bands; `references`
    (e.g. {"full model": 0.98, "empty": 0.02}) are dashed horizontal lines in every panel. A method
    keeps its colour across panels."""
    for panel, series in panels.items():
        _check_lengths(f"{panel} series", series, len(densities), "densities")
        _check_lengths(f"{panel} errors for", (errors or {}).get(panel), len(densities), "densities")
    xs = _as_numpy(densities).astype(float) * 100
    methods = list(dict.fromkeys(m for series in panels.values() for m in series))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    fig = _new_figure(4.2 * max(len(panels), 1) + 2.2, 3.8)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False).ravel()
    for ax, (panel, series) in zip(axes, panels.items()):
        for name, value in (references or {}).items():
            ax.axhline(value, color="0.4", linestyle="--", linewidth=1)
            ax.annotate(name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="0.3",
                        va="bottom")
        for method, values in series.items():
            y = _as_numpy(values).astype(float)
            ax.plot(xs, y, marker="o", markersize=3, color=colors[method], label=method)
            band = (errors or {}).get(panel, {}).get(method)
            if band is not None:
                err = _as_numpy(band).astype(float)
                ax.fill_between(xs, y - err, y + err, color=colors[method], alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])  # the ladder itself, not log-axis decades
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("density [% of the weights]")
        ax.set_ylabel(ylabel)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    if methods:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _overlap_texts(observed: np.ndarray, chance: np.ndarray, fmt: str) -> np.ndarray:
    """Annotation per cell: the observed score, and its chance level below it."""
    return np.array([[f"{fmt.format(v)}\nchance {fmt.format(chance[r, c])}" for c, v in enumerate(row)]
                     for r, row in enumerate(observed)], dtype=object)


def overlap_heatmap(path, labels: list[str], observed: dict[str, np.ndarray], chance: dict[str, np.ndarray],
                    title: str = "", fmt: str = "{:.2f}") -> Path:
    """Overlap between any number of masks: one heat map per score (e.g. {"IoU": [L, L], "IoMin":
    [L, L]}, as `overlap_matrix` gives them), each cell annotated with the observed score and,
    below it, the chance level of independent random masks of the same per-tensor counts.

    `chance` has the same keys and shapes as `observed`. Colours show the observed score on one
    fixed 0..1 scale for all panels, so panels and figures compare directly.
    """
    shape = (len(labels), len(labels))
    if set(chance) != set(observed):
        raise ValueError(f"chance has scores {sorted(chance)} but observed has {sorted(observed)}")
    arrays = {k: _as_numpy(m).astype(float) for k, m in observed.items()}
    levels = {k: _as_numpy(m).astype(float) for k, m in chance.items()}
    for what, group in (("observed", arrays), ("chance", levels)):
        for k, m in group.items():
            if m.shape != shape:
                raise ValueError(f"{what} {k!r} has shape {m.shape}, but {len(labels)} labels give {shape}")
    norm = Normalize(0.0, 1.0)
    fontsize = 8 if len(labels) <= 6 else 6
    cell = max(0.8, 11 * 0.6 * fontsize / 72 + 0.15)  # room for "chance 0.00"
    panel = 1.4 + cell * len(labels)
    fig = _new_figure(panel * max(len(arrays), 1) + 1.0, panel * 0.85 + 0.5)
    axes = fig.subplots(1, max(len(arrays), 1), squeeze=False).ravel()
    image = None
    for ax, (name, m) in zip(axes, arrays.items()):
        image = ax.imshow(m, cmap="viridis", norm=norm, aspect="auto")
        texts = _overlap_texts(m, levels[name], fmt)
        for (r, c), v in np.ndenumerate(m):
            red, green, blue, _ = image.cmap(norm(v))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            ax.text(c, r, texts[r, c], ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")
        ax.set_xticks(range(len(labels)), [_wrap(label) for label in labels],
                      rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
        ax.set_yticks(range(len(labels)), [_wrap(label) for label in labels])
        ax.set_title(name)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path)


def unit_heatmap(path, grids: dict[str, np.ndarray], row_labels: list[str], col_labels: list[str],
                 title: str = "", xlabel: str = "head") -> Path:
    """Which units each mask keeps: one panel per mask, side by side with shared rows (e.g.
    attention modules x heads), each grid [len(row_labels), len(col_labels)] of values in [0, 1]
    (1 kept; over seeds, the fraction of seeds that keep the unit; NaN: no such unit). One fixed
    0..1 scale for every panel; the values are written in the cells when there are few columns."""
    shape = (len(row_labels), len(col_labels))
    arrays = {k: _as_numpy(m).astype(float) for k, m in grids.items()}
    for k, m in arrays.items():
        if m.shape != shape:
            raise ValueError(f"grid {k!r} has shape {m.shape}, labels give {shape}")
    norm = Normalize(0.0, 1.0)
    annotate = shape[1] <= 16
    cell = 0.35 if annotate else 0.18
    label_width = max((len(label) for label in row_labels), default=1) * 0.07 + 0.3  # inches, about 7 pt per char
    fig = _new_figure(label_width + len(arrays) * (cell * shape[1] + 0.3) + 1.0, cell * shape[0] + 1.3)
    axes = fig.subplots(1, max(len(arrays), 1), squeeze=False, sharey=True).ravel()
    image = None
    for index, (ax, (name, m)) in enumerate(zip(axes, arrays.items())):
        image = ax.imshow(m, cmap="viridis", norm=norm, aspect="auto")
        if annotate:
            for (r, c), v in np.ndenumerate(m):
                if not np.isnan(v):
                    red, green, blue, _ = image.cmap(norm(v))
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
                    ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=6, color="white" if dark else "black")
        ticks = range(0, shape[1], max(1, shape[1] // 16))
        ax.set_xticks(list(ticks), [col_labels[i] for i in ticks], fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        if index == 0:  # the rows are shared: label them once
            ax.set_yticks(range(shape[0]), row_labels, fontsize=7)
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(name, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
