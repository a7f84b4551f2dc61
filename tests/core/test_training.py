import copy
import functools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modmask import TrainedMask, masked_call, train_mask
from modmask.core.training import MaskTrainer, settings_from
from modmask.models import MLP


def make_trainer(model, loss_fn, batch=None, **options):
    """A one-mask MaskTrainer from train_mask's keyword options (MaskConfig and Execution fields,
    seed, init_logits, trainable, fixed_masks), prepared on `batch` when one is given."""
    config, execution, rest = settings_from(None, None, options)
    trainer = MaskTrainer(model, loss_fn, config, execution, **rest)
    return trainer.prepare([batch]) if batch is not None else trainer


def _toy(seed=0):
    """Labels depend on inputs 0..3 only; inputs 4..11 are noise. A fresh model each call (the
    pretraining is done once per seed)."""
    state, x, y = _pretrained_toy(seed)
    model = MLP(12, [32], 2)
    model.load_state_dict(state)
    return model, x, y


@functools.lru_cache(maxsize=None)
def _pretrained_toy(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 12, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    model = MLP(12, [32], 2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        idx = torch.randint(0, 2048, (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {n: t.detach().clone() for n, t in model.state_dict().items()}, x, y


def _batches(x, y, batch=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=g)
        yield x[idx], y[idx]


def test_mask_removes_the_weights_of_irrelevant_inputs_and_leaves_the_model_untouched():
    model, x, y = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = train_mask(model, _batches(x, y), F.cross_entropy, steps=1500, beta=0.05, progress=False)
    first = trained.masks["layers.0.weight"].float().mean(0)  # kept fraction per input column
    assert first[:4].min() > 2 * first[4:].max(), first
    assert first[4:].max() < 0.2
    assert set(trained.masks) == {"layers.0.weight", "layers.1.weight"}  # biases unmasked by default
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # the mode is restored


def test_same_seed_same_mask_and_logits_round_trip(tmp_path):
    model, x, y = _toy()
    options = dict(steps=30, seed=3, lr=0.3, beta=0.05, progress=False)  # fast enough for some logits to cross 0
    a = train_mask(model, _batches(x, y, 32), F.cross_entropy, **options)
    b = train_mask(model, _batches(x, y, 32), F.cross_entropy, **options)
    assert all(torch.equal(a.logits[n], b.logits[n]) for n in a.logits)
    assert 0.05 < a.masks.density() < 0.95  # a mask of both kept and removed weights
    a.save(tmp_path / "logits.safetensors")
    loaded = TrainedMask.load(tmp_path / "logits.safetensors", model)
    assert list(loaded.logits) == list(a.logits)
    for name, logits in a.logits.items():  # the values themselves, not only their signs
        assert loaded.logits[name].dtype == logits.dtype and torch.equal(loaded.logits[name], logits), name
    assert loaded.masks == a.masks


def _clipping_run(model, batches, original_clipping, beta, grad_clip, lr):
    """A trainer whose masks keep every weight in every sample (logits ~100: the soft samples are
    exactly 1, so the task loss gives the logits no gradient; the regulariser gives each beta / B)."""
    trainer = make_trainer(model, F.cross_entropy, batches[0], k=2, init_logit=100.0, beta=beta, lr=lr,
                           grad_clip=grad_clip, original_clipping=original_clipping)
    for batch in batches:
        trainer.step([batch])
    return trainer


def test_original_clipping_follows_the_original_codes_arithmetic_by_hand():
    """The original code's quirk: the frozen weights' gradients accumulate over the steps and take
    part in the global-norm clipping (each step scales them with the logits' gradient)."""
    torch.manual_seed(0)
    model = MLP(6, [8], 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 6, generator=g) * scale, torch.randint(0, 3, (8,), generator=g))
               for scale in (1, 8, 0.1, 8, 0.1, 8)]  # weight gradients of very different sizes
    beta, clip, lr = 0.01, 0.05, 0.1  # the logits' gradient alone (norm 0.011) stays below the clip
    quirk = _clipping_run(model, batches, True, beta, clip, lr)
    default = _clipping_run(model, batches, False, beta, clip, lr)

    # by hand: every logit has the gradient beta / B times the step's clip factor, whose norm counts
    # the weights' gradients summed over the steps (each step's sum scaled by that step's factor)
    count = sum(l.numel() for l in quirk.logits.values())
    per_logit = beta / 8
    summed = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    logit, m, v = 100.0, 0.0, 0.0
    factors = []
    for t, (x, y) in enumerate(batches, 1):
        plain = copy.deepcopy(model)  # every sample keeps every weight: the plain model's gradients
        F.cross_entropy(plain(x), y).backward()
        summed = {n: summed[n] + p.grad for n, p in plain.named_parameters()}
        norm = math.sqrt(count * per_logit ** 2 + sum(float(s.double().pow(2).sum()) for s in summed.values()))
        factor = min(1.0, clip / (norm + 1e-6))  # clip_grad_norm_'s arithmetic
        factors.append(factor)
        summed = {n: s * factor for n, s in summed.items()}
        grad = per_logit * factor
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2  # Adam's defaults
        logit -= lr * (m / (1 - 0.9 ** t)) / (math.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert max(factors) < 0.2 and max(factors) / min(factors) > 5  # the clip binds, by different amounts
    for name, logits in quirk.logits.items():
        assert torch.allclose(logits, torch.full_like(logits, logit), rtol=0, atol=1e-4), (name, logits.max(), logit)
    held = {**quirk.weights, **quirk.others}
    for name, s in summed.items():
        expected = s.t() if name in quirk.transposed else s
        assert torch.allclose(held[name].grad, expected, rtol=1e-5, atol=1e-8), name

    # the default: the clip never binds, so Adam steps every logit by lr exactly: the quirk differs
    for name, logits in default.logits.items():
        assert torch.allclose(logits, torch.full_like(logits, 100.0 - 6 * lr), rtol=0, atol=1e-4), name
        assert (quirk.logits[name] - logits).min() > 0.05, name  # shrunken gradients: smaller Adam steps
    assert all(w.grad is None for w in [*default.weights.values(), *default.others.values()])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_original_clipping_quirk_runs_through_train_mask_without_touching_the_model():
    model, x, y = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = dict(steps=8, lr=0.1, seed=2, grad_clip=0.1, progress=False)
    quirk = train_mask(model, _batches(x, y, 32), F.cross_entropy, original_clipping=True, **options)
    default = train_mask(model, _batches(x, y, 32), F.cross_entropy, **options)
    assert not any(torch.allclose(quirk.logits[n], default.logits[n], atol=1e-3) for n in quirk.logits)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_clear_errors_for_bad_input():
    model, x, y = _toy()
    batches = _batches(x, y)
    with pytest.raises(ValueError, match="unknown parameter name"):
        train_mask(model, batches, F.cross_entropy, steps=1, parameters=["layers.9.weight"])
    with pytest.raises(ValueError, match="selects no parameter"):
        train_mask(model, batches, F.cross_entropy, steps=1, parameters="*.nothing")
    with pytest.raises(ValueError, match="multiple of k=4"):
        train_mask(model, [(x[:3], y[:3])], F.cross_entropy, steps=1)
    with pytest.raises(FloatingPointError, match="step 0"):
        train_mask(model, batches, lambda out, t: out.sum() * float("nan"), steps=1, progress=False)
    # a matrix given in the [in, out] layout instead of the model's [out, in]
    with pytest.raises(ValueError, match=r"init_logits does not fit the model \(MLP\).*'layers.0.weight' has shape "
                                         r"\(12, 32\) in init_logits but \(32, 12\) in the model"):
        train_mask(model, batches, F.cross_entropy, steps=1, init_logits={"layers.0.weight": torch.zeros(12, 32)})
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['step'\]"):
        train_mask(model, batches, F.cross_entropy, step=1)


def test_parameter_selection_by_glob_predicate_and_biases():
    model, x, y = _toy()
    batches = _batches(x, y)
    glob = train_mask(model, batches, F.cross_entropy, steps=1, parameters="layers.1.*", progress=False)
    assert set(glob.logits) == {"layers.1.weight", "layers.1.bias"}
    pred = train_mask(model, batches, F.cross_entropy, steps=1, progress=False,
                      parameters=lambda name, p: name.endswith("bias"))
    assert set(pred.logits) == {"layers.0.bias", "layers.1.bias"}
    every = train_mask(model, batches, F.cross_entropy, steps=1, biases=True, progress=False)
    assert len(every.logits) == 4


def test_embeddings_are_never_masked_by_default():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    batches = [(torch.randint(0, 10, (8, 2)), torch.randint(0, 2, (8,)))]
    trained = train_mask(model, batches, F.cross_entropy, steps=2, progress=False)
    assert set(trained.logits) == {"2.weight"}


def test_the_regulariser_is_beta_over_the_batch_size_times_the_sum_of_the_logits():
    model, x, y = _toy()
    batch = (x[:16], y[:16])
    g = torch.Generator().manual_seed(0)
    init = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters() if n.endswith("weight")}
    total = sum(float(l.double().sum()) for l in init.values())
    for reg_batch_size, b in ((None, 16), (1000, 1000)):
        trainer = make_trainer(model, F.cross_entropy, batch, beta=0.3, reg_batch_size=reg_batch_size,
                               init_logits=init)
        regulariser = trainer.step([batch])[0]["regulariser"]
        assert regulariser.item() == pytest.approx(0.3 / b * total, rel=1e-5), reg_batch_size
        # its gradient alone: logits of 100 keep every weight with a soft sample of exactly 1
        quiet = make_trainer(model, F.cross_entropy, batch, beta=0.3, reg_batch_size=reg_batch_size,
                             init_logit=100.0, grad_clip=None)
        quiet.step([batch])
        for name, logits in quiet.logits.items():
            assert torch.equal(logits.grad, torch.full_like(logits, 0.3 / b)), (reg_batch_size, name)


def _dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2)).eval()


def test_train_mode_draws_the_models_randomness_from_the_mask_seed_and_restores_the_callers():
    model = _dropout_model()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 12, generator=g), torch.randint(0, 2, (16,), generator=g)) for _ in range(4)]

    def run(seed, mode="train", caller_seed=0):
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        trained = train_mask(model, batches, F.cross_entropy, steps=4, lr=0.1, seed=seed, mode=mode, progress=False)
        assert torch.equal(torch.get_rng_state(), state), "the caller's random state was not restored"
        assert not model.training  # the model's own mode is restored
        return torch.cat([l.flatten() for l in trained.logits.values()])

    first = run(4)
    assert torch.equal(first, run(4, caller_seed=123))  # dropout seeded from the mask seed, not the caller's state
    assert not torch.equal(first, run(5))
    assert not torch.equal(first, run(4, mode="eval"))  # dropout was active in mode 'train'


def test_fixed_masks_are_applied_while_the_other_masks_train():
    model, x, y = _toy()
    batch = (x[:16], y[:16])
    outputs = []

    def loss(out, targets):
        outputs.append(out.detach())
        return F.cross_entropy(out, targets)

    # a fixed mask of zeros on the output layer: every output is the output bias
    zeros = {"layers.1.weight": torch.zeros(2, 32, dtype=torch.bool)}
    trained = train_mask(model, [batch], loss, steps=2, fixed_masks=zeros, progress=False)
    # two steps, and first the loss with every trained weight kept (the stage's reference loss)
    assert set(trained.logits) == {"layers.0.weight"} and len(outputs) == 3
    bias = model.layers[1].bias.detach()
    assert all(torch.equal(out, bias.expand(16, 2)) for out in outputs)
    # a random fixed mask on the first layer, the output layer's trained mask keeping every weight
    # (logits 100): the outputs are the model's with the fixed mask applied by hand
    outputs.clear()
    fixed = {"layers.0.weight": torch.rand(32, 12, generator=torch.Generator().manual_seed(0)) > 0.5}
    train_mask(model, [batch], loss, steps=2, fixed_masks=fixed, init_logit=100.0, progress=False)
    with torch.no_grad():
        expected = masked_call(model, fixed, batch[0])
        assert not torch.allclose(expected, model(batch[0]), atol=1e-3)
    assert len(outputs) == 3 and all(torch.allclose(out, expected, atol=1e-6) for out in outputs)


def test_train_mask_inside_no_grad_trains_as_outside():
    model, x, y = _toy()
    options = dict(steps=3, lr=0.1, seed=1, progress=False)
    with torch.no_grad():
        inside = train_mask(model, _batches(x, y), F.cross_entropy, **options)
    outside = train_mask(model, _batches(x, y), F.cross_entropy, **options)
    for name, logits in inside.logits.items():
        assert (logits != 2.0).any() and torch.equal(logits, outside.logits[name]), name
    batch = (x[:16], y[:16])
    with torch.no_grad():
        plan = make_trainer(model, F.cross_entropy, batch).plan
    assert plan == make_trainer(model, F.cross_entropy, batch).plan  # activations probed as in training
    assert plan.activations_per_sample > 0
