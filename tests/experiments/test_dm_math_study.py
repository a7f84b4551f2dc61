"""The DeepMind Mathematics study: the tied Transformer, and the smoke preset end to end."""

import json

import torch

from modmask import cli
from modmask import Execution, MaskConfig, MaskTrainer
from modmask.models import TransformerEncoderDecoder
from modmask.models.seq2seq import sequence_loss


def test_tied_transformer_shares_one_embedding_and_trains_masks():
    model = TransformerEncoderDecoder(11, 11, d_model=16, heads=2, ff_size=32, layers=1, dropout=0.0, tied=True).eval()
    assert model.out_embedding is model.in_embedding and model.output is None
    src, tgt = torch.randint(0, 10, (8, 5)), torch.randint(0, 10, (8, 4))
    lengths = torch.full((8,), 4)
    logits = model(src, torch.full((8,), 5), 4, tgt)
    assert logits.shape == (8, 4, 11)
    batch = ((src, torch.full((8,), 5), 4, tgt), (tgt, lengths))
    trainer = MaskTrainer(model, lambda out, t: sequence_loss(out, *t), MaskConfig(k=4), Execution(path="vmap"))
    trainer.prepare([batch]).step([batch])
    assert trainer.path == "vmap"
    assert "in_embedding.weight" not in trainer.logits  # embeddings (and so the tied output) stay unmasked


def test_dm_math_smoke_end_to_end_on_generated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MODMASK_DATA", str(tmp_path / "data"))
    assert cli.main(["run", "dm_math", "--preset", "smoke", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "run/results.json").read_text())
    accuracy = summary["aggregate"]["modules"]["arithmetic__add_or_sub"]["accuracy"]
    assert set(accuracy) == {"pretrained", "control", "easy"} and set(accuracy["easy"]) == {"easy", "hard"}
    assert (tmp_path / "data/dm_math_generated/seed0-train80-test20/train-hard/arithmetic__add_or_sub.txt").exists()
    assert (tmp_path / "run/figures/accuracy_hard.png").exists()
    assert "mask trained on train-easy" in (tmp_path / "run/report.md").read_text()
    # the accuracies in both removal modes: the tied Transformer's masked tensors (no embedding) all read their means
    block = summary["aggregate"]["modules"]["arithmetic__add_or_sub"]["removal_modes"]
    assert block["trained_with"] == "zero" and block["modes"]["zero"] == accuracy
    assert list(block["modes"]["mean"]) == ["pretrained", "control", "easy"]
    assert block["modes"]["mean"]["pretrained"] == accuracy["pretrained"]  # nothing removed
    report = (tmp_path / "run/report.md").read_text()
    assert "## Accuracy in both removal modes [%]" in report and "| condition | easy test, zero | easy test, mean |" in report
    _assert_module_curves(tmp_path / "run", summary, [0.01, 0.1, 0.5])
    _assert_curve_recomputes_them_without_training(tmp_path / "run")


def _assert_module_curves(out, summary, densities, baselines=("magnitude", "wanda", "taylor", "random",
                                                                "random per tensor")):
    """Both masks' rankings on the hard and the easy test set, beside the baselines, in results.json
    (as the module's curves.json holds them, with their settings) and in the report."""
    module = "arithmetic__add_or_sub"
    curves = summary["aggregate"]["modules"][module]["curves"]
    saved = json.loads((out / f"seed-0/{module}/curves.json").read_text())
    assert saved["settings"]["densities"] == densities and set(saved["curves"]) == set(curves) == {"hard", "easy"}
    for name in ("hard", "easy"):
        assert [d["mean"] for d in curves[name]["densities"]] == densities
        assert list(curves[name]["methods"]) == ["mask control", "mask easy", *baselines]
    report = (out / "report.md").read_text()
    assert "## Curves over density" in report and "| easy-trained mask |" in report
    assert "![curves_add_or_sub hard](figures/curves_add_or_sub_hard.png)" in report
    assert "arithmetic__add_or_sub, read as rankings: " in report


def _assert_curve_recomputes_them_without_training(out):
    """`modmask curve` on a study whose modules cache their results: the curves are computed again
    with the new settings, and nothing else of the module is rewritten (no training, no evaluation)."""
    module = out / "seed-0/arithmetic__add_or_sub"
    kept = {p: p.stat().st_mtime_ns for p in [module / "results.json", *module.glob("masks/*"),
                                               *module.glob("checkpoints/*")]}
    assert len(kept) >= 4  # the results, two masks, the pretrained network
    assert cli.main(["curve", str(out), "--set", "curves.densities=0.05,0.5", "--set", "curves.baselines=random",
                     "--quiet"]) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())
    summary = json.loads((out / "results.json").read_text())
    _assert_module_curves(out, summary, [0.05, 0.5], ("random", "random per tensor"))
    assert json.loads((out / "config.json").read_text())["curves"]["densities"] == [0.05, 0.5]
