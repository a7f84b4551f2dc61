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
