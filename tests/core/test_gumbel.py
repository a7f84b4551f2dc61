import math

import torch

from modmask.core.gumbel import (UniformSource, gumbel_sigmoid_reference, hard_samples,
                                 sample_masked_weights, soft_samples, uniform_values)


def test_masked_weights_are_the_kept_weights_and_exactly_zero_elsewhere():
    weights = torch.randn(50, 40)
    logits = torch.randn(50, 40, requires_grad=True)
    uniforms = UniformSource(0).draw(4, (50, 40))
    masked = sample_masked_weights(logits, weights, uniforms)
    assert masked.shape == (4, 50, 40)
    # a sample keeps weight i iff U_i > 1 - sigmoid(l_i), from the uniforms themselves (not the module's thresholds)
    keep = uniform_values(uniforms) > torch.sigmoid(-logits.detach())
    assert 0.2 < keep.float().mean() < 0.8
    assert torch.equal(masked, torch.where(keep, weights, torch.zeros(())))  # kept where kept, 0 elsewhere
    assert torch.all(masked[keep] != 0)  # (no weight is 0 by chance: an inverted mask could not pass)
    # logits far from 0 decide every sample: exactly the weights with positive logits are kept
    sure = torch.where(torch.rand(50, 40) < 0.5, 30.0, -30.0)
    masked = sample_masked_weights(sure, weights, uniforms)
    assert torch.equal(masked, torch.where(sure > 0, weights, torch.zeros(())).expand(4, 50, 40))


def test_keep_probability_matches_sigmoid_of_logit():
    logits = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])
    samples = hard_samples(logits, UniformSource(1).draw(20000, (6,))).float().mean(0)
    expected = torch.sigmoid(logits)
    # 20000 Bernoulli draws: standard error below 0.0036; allow 4 of them
    assert torch.all((samples - expected).abs() < 4 * torch.sqrt(expected * (1 - expected) / 20000) + 1e-3)


def test_reference_formula_has_the_same_keep_probability():
    logits = torch.tensor([-1.0, 0.0, 2.0])
    samples = gumbel_sigmoid_reference(logits, 20000, torch.Generator().manual_seed(0)).mean(0)
    assert torch.allclose(samples, torch.sigmoid(logits), atol=0.015)


def test_soft_sample_is_sigmoid_of_logit_plus_logistic_noise():
    logits = torch.randn(7)
    uniforms = UniformSource(2).draw(3, (7,))
    u = uniform_values(uniforms)
    expected = torch.sigmoid(logits + torch.log(u) - torch.log1p(-u))
    assert torch.allclose(soft_samples(logits, uniforms), expected, atol=1e-6)
    assert torch.equal(hard_samples(logits, uniforms), expected > 0.5)


def test_straight_through_gradient_reaches_logits():
    weights = torch.randn(6, 5)
    logits = torch.full((6, 5), 0.3, requires_grad=True)
    uniforms = UniformSource(3).draw(4, (6, 5))
    grad_out = torch.randn(4, 6, 5)
    (sample_masked_weights(logits, weights, uniforms) * grad_out).sum().backward()
    # d/dl sum_k g_k W h_k  with dh/dl := ds/dl = s (1 - s)
    soft = soft_samples(logits, uniforms)
    expected = (grad_out * weights * soft * (1 - soft)).sum(0)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert logits.grad.abs().sum() > 0


def test_uniform_source_is_seeded_and_covers_the_range():
    a, b = UniformSource(5).draw(2, (1000,)), UniformSource(5).draw(2, (1000,))
    assert torch.equal(a, b)
    assert not torch.equal(a, UniformSource(6).draw(2, (1000,)))
    u = uniform_values(UniformSource(7).draw(1, (100000,)))
    assert 0 < u.min() < 0.001 and 0.999 < u.max() < 1
    assert math.isclose(u.mean().item(), 0.5, abs_tol=0.01)
