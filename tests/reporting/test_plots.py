"""Tests for modmask.reporting.plots: every figure is a real PNG, written atomically, with exact mask colours."""

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from modmask.reporting import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, directory):
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert not list(directory.rglob("*.tmp*")), "temporary file left behind"


def test_bar_groups_writes_png_into_new_directory(tmp_path):
    out = tmp_path / "nested" / "dir" / "acc.png"
    result = plots.bar_groups(out, ["Full", "+", "¬+", "*", "¬*"],
                              {"add": [99, 98, 3, 1, 97], "mul": [95, 2, 94, 90, 4]},
                              errors={"add": [1, 1, 2, 0.5, 1], "mul": [2, 1, 1, 3, 2]},
                              ylabel="accuracy [%]", title="add/mul", ylim=(0, 100))
    assert result == out
    assert_png(out, tmp_path)


def test_bar_groups_log_scale_and_tensor_input(tmp_path):
    out = plots.bar_groups(tmp_path / "counts.png", ["layer 1", "output"],
                           {"+": torch.tensor([2.0e4, 300.0]), "*": np.array([1.5e4, 250.0])}, log=True)
    assert_png(out, tmp_path)


def test_bar_groups_rejects_series_of_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="late masked"):
        plots.bar_groups(tmp_path / "x.png", ["a", "b", "c"],
                         {"early masked": [1, 2, 3], "late masked": [1, 2]})
    with pytest.raises(ValueError, match="early masked"):
        plots.bar_groups(tmp_path / "x.png", ["a", "b"], {"early masked": [1, 2]},
                         errors={"early masked": [1]})
    assert not (tmp_path / "x.png").exists()


def test_confusion_grid_with_stds(tmp_path):
    rng = np.random.default_rng(0)
    matrices = {name: rng.uniform(0, 100, (2, 3)) for name in ["verify", "+", "*", "¬+", "¬*"]}
    stds = {name: rng.uniform(0, 5, (2, 3)) for name in matrices}
    out = plots.confusion_grid(tmp_path / "confusion.png", matrices, ["+", "*"],
                               ["+ result", "* result", "neither"], stds=stds, title="operation confusion")
    assert_png(out, tmp_path)


def test_confusion_grid_center_zero_10x10(tmp_path):
    rng = np.random.default_rng(1)
    classes = [f"c{i}" for i in range(10)]
    matrices = {f"removed {c}": rng.normal(0, 10, (10, 10)) for c in classes[:4]}
    out = plots.confusion_grid(tmp_path / "diff.png", matrices, classes, classes, center_zero=True)
    assert_png(out, tmp_path)


def test_confusion_grid_rejects_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="'bad'"):
        plots.confusion_grid(tmp_path / "x.png", {"bad": np.zeros((3, 3))}, ["a", "b"], ["x", "y", "z"])


def test_color_limits():
    matrices = [np.array([[-3.0, 1.0]]), np.array([[7.0, np.nan]])]
    assert plots._color_limits(matrices, center_zero=True) == (-7.0, 7.0)
    assert plots._color_limits([np.array([[-9.0, 2.0]])], center_zero=True) == (-9.0, 9.0)
    assert plots._color_limits(matrices, center_zero=False) == (-3.0, 7.0)
    lo, hi = plots._color_limits([np.zeros((2, 2))], center_zero=True)
    assert lo == -hi and hi > 0


def test_histogram_density_and_png(tmp_path):
    counts_a, edges = np.histogram(np.random.default_rng(0).uniform(size=1000), bins=50, range=(0, 1))
    curves = {"+/* FNN": (counts_a.tolist(), edges.tolist()), "empty": ([0] * 50, edges)}
    out = plots.histogram(tmp_path / "hist.png", curves, title="mask values")
    assert_png(out, tmp_path)
    out = plots.histogram(tmp_path / "hist_lin.png", curves, log=False)
    assert_png(out, tmp_path)


def test_histogram_rejects_bad_edges(tmp_path):
    with pytest.raises(ValueError, match="'c'"):
        plots.histogram(tmp_path / "x.png", {"c": ([1, 2, 3], [0.0, 0.5, 1.0])})


def test_mask_colors_exact():
    # Columns: only first, only second, both / neither in full, neither outside full, both.
    first = np.array([[True, False, True], [False, False, True]])
    second = np.array([[False, True, True], [False, False, True]])
    full = np.array([[True, True, True], [True, False, True]])
    image = plots.mask_colors({"+": first, "*": second}, full=full)
    assert image.shape == (2, 3, 3)
    expected = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[0.3, 0.3, 0.3], [0, 0, 0], [0, 0, 1]]], dtype=float)
    np.testing.assert_array_equal(image, expected)
    # Without a full mask, "neither" is black everywhere.
    image = plots.mask_colors({"+": torch.from_numpy(first), "*": second})
    np.testing.assert_array_equal(image[1, 0], [0, 0, 0])


def test_mask_colors_respects_dict_order():
    a, b = np.array([[True]]), np.array([[False]])
    np.testing.assert_array_equal(plots.mask_colors({"x": a, "y": b})[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(plots.mask_colors({"y": b, "x": a})[0, 0], [0, 1, 0])


def test_mask_image_png_and_pixels(tmp_path):
    first = np.array([[True, False, True], [False, False, True]])
    second = np.array([[False, True, True], [False, False, True]])
    full = np.ones((2, 3), dtype=bool)
    out = plots.mask_image(tmp_path / "masks" / "layer1.png", {"+": first, "*": second}, full=full,
                           title="layer 1")
    assert_png(out, tmp_path)
    pixels = imread(out)[..., :3]
    # Every mask colour appears somewhere in the rendered image.
    for colour in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert np.any(np.all(np.abs(pixels - colour) < 0.02, axis=-1)), colour


def test_mask_image_rejects_bad_masks(tmp_path):
    with pytest.raises(ValueError, match="same shape"):
        plots.mask_image(tmp_path / "x.png", {"+": np.zeros((2, 3), bool), "*": np.zeros((3, 2), bool)})
    with pytest.raises(ValueError, match="exactly two"):
        plots.mask_image(tmp_path / "x.png", {"+": np.zeros((2, 3), bool)})
    with pytest.raises(ValueError, match="boolean"):
        plots.mask_colors({"+": np.zeros((2, 3)), "*": np.zeros((2, 3), bool)})
    with pytest.raises(ValueError, match="same shape"):
        plots.mask_colors({"+": np.zeros((2, 3), bool), "*": np.zeros((2, 3), bool)}, full=np.ones((2, 2), bool))
    assert not (tmp_path / "x.png").exists()


def test_line_plot_numeric_log_and_categorical(tmp_path):
    out = plots.line_plot(tmp_path / "beta.png", [1e-5, 1e-4, 1e-3], {"full": [99, 98, 90]},
                          errors={"full": [1, 1, 3]}, xlabel="β", ylabel="accuracy [%]", logx=True)
    assert_png(out, tmp_path)
    out = plots.line_plot(tmp_path / "size.png", ["small", "medium", "big", "huge"],
                          {"shared": [50, 40, 35, 30], "other": np.array([1, 2, 3, 4])},
                          errors={"shared": [2, 2, 1, 1]}, ylabel="shared [%]")
    assert_png(out, tmp_path)


def test_line_plot_rejects_wrong_length(tmp_path):
    with pytest.raises(ValueError, match="'shared'"):
        plots.line_plot(tmp_path / "x.png", [1, 2, 3], {"shared": [1, 2]})


def test_confusion_grid_rejects_std_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="std"):
        plots.confusion_grid(tmp_path / "x.png", {"m": np.zeros((2, 3))}, ["a", "b"], ["x", "y", "z"],
                             stds={"m": np.zeros((3, 2))})


def test_overlap_heatmap_writes_png_with_chance_annotations(tmp_path):
    from modmask import Masks, overlap_matrix

    g = torch.Generator().manual_seed(0)
    masks = {name: Masks({"w": torch.rand(20, 10, generator=g) < p, "v": torch.rand(30, generator=g) < p})
             for name, p in [("Full", 0.4), ("Pair 1", 0.2), ("Pair 2", 0.25)]}
    matrix = overlap_matrix(masks)
    observed = {"IoU": matrix["iou"], "IoMin": matrix["iomin"]}
    chance = {"IoU": matrix["iou_chance"], "IoMin": matrix["iomin_chance"]}
    out = plots.overlap_heatmap(tmp_path / "overlap.png", matrix["labels"], observed, chance, title="overlap")
    assert_png(out, tmp_path)
    texts = plots._overlap_texts(np.array(matrix["iou"]), np.array(matrix["iou_chance"]), "{:.2f}")
    assert texts[0, 1] == f"{matrix['iou'][0][1]:.2f}\nchance {matrix['iou_chance'][0][1]:.2f}"
    assert texts.shape == (3, 3)
    with pytest.raises(ValueError, match="'IoMin'"):
        plots.overlap_heatmap(tmp_path / "x.png", matrix["labels"], observed,
                              {"IoU": matrix["iou_chance"], "IoMin": [[0.0]]})
    with pytest.raises(ValueError, match="chance has scores"):
        plots.overlap_heatmap(tmp_path / "x.png", matrix["labels"], observed, {"IoU": matrix["iou_chance"]})


def test_curve_panels_two_panels_log_density_bands_and_references(tmp_path):
    out = plots.curve_panels(tmp_path / "curves.png", [0.002, 0.01, 0.5],
                             {"sufficiency": {"mask add": [0.9, 1.0, 1.0], "random": [0.1, 0.2, 0.8]},
                              "necessity": {"mask add": [0.2, 0.1, 0.0], "random": [0.9, 0.8, 0.3]}},
                             errors={"sufficiency": {"random": [0.05, 0.05, 0.1]}},
                             references={"full": 1.0, "empty": 0.1}, title="add")
    assert_png(out, tmp_path)
    with pytest.raises(ValueError, match="necessity series 'random' has 2 values but there are 3 densities"):
        plots.curve_panels(tmp_path / "bad.png", [0.002, 0.01, 0.5], {"necessity": {"random": [0.9, 0.8]}})
