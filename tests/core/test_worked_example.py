"""The worked example of docs/real_models.md ("Which heads and neurons") runs as written, on a tiny
random GPT-2 instead of a downloaded checkpoint and with a few steps, and its exports load back."""

import json
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

DOC = Path(__file__).parents[2] / "docs" / "real_models.md"


def test_the_worked_example_runs_and_exports(tmp_path, monkeypatch, capsys):
    text = DOC.read_text()
    section = text[text.index("## Which heads and neurons"):text.index("## Exporting masks")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) < 30  # "end to end in under 30 lines of user code"
    tiny = ('transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, '
            'n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)).eval()')
    code = code.replace('transformers.GPT2LMHeadModel.from_pretrained("gpt2").eval()', tiny)
    code = code.replace("steps=2000", "steps=3, progress=False")
    assert tiny in code and "steps=3" in code
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    scope = {}
    exec(compile(code, str(DOC), "exec"), scope)
    out = capsys.readouterr().out
    assert out.startswith("IoU ") and "chance" in out
    assert "layer 0 head 0" in out or "layer 0 neuron 0" in out  # a fresh mask keeps every unit
    model, masks = scope["model"], scope["masks"]
    pruned = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2-copy").eval()
    ids = torch.randint(0, 50, (2, 16))
    from modmask import masked_call
    assert torch.allclose(pruned(ids).logits, masked_call(model, masks["copy"].masks, input_ids=ids).logits,
                          atol=1e-5)
    circuit = json.loads((tmp_path / "copy-circuit.json").read_text())
    assert {"a0.h3", "m1", "input", "logits"} <= set(circuit["nodes"])
