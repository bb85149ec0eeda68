"""The watchdog in a plain PyTorch loop (MiniMind style): each LD42x rule, bad and good."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import loradoctor
from loradoctor.model.run_state import WatchOptions


class _LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 2):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + x @ self.lora_A.t() @ self.lora_B.t()


def _model(trainable_adapters: bool = True):
    torch.manual_seed(0)
    model = nn.Sequential(_LoRALinear(nn.Linear(8, 8)), nn.ReLU(), _LoRALinear(nn.Linear(8, 4)))
    for name, p in model.named_parameters():
        p.requires_grad = trainable_adapters and "lora_" in name
    return model


def _train(model, watch, steps: int, lr: float = 0.1, poison_at: int | None = None):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr) if params else None
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        x = torch.randn(16, 8, generator=gen)
        y = torch.randint(0, 4, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        if poison_at is not None and step >= poison_at:
            loss = loss * float("nan")
        if params:
            loss.backward()
        watch.step(loss)
        if opt:
            opt.step()
            opt.zero_grad()


def test_a_healthy_loop_raises_nothing():
    model = _model()
    watch = loradoctor.Watchdog(model)
    _train(model, watch, 12)
    assert watch.report.ok and not watch.report.findings


def test_a_nan_loss_raises_naming_its_step():
    model = _model()
    watch = loradoctor.Watchdog(model)
    with pytest.raises(loradoctor.UnhealthyPipeline) as raised:
        _train(model, watch, 10, poison_at=4)
    assert "step 4" in str(raised.value)
    assert [f.code for f in raised.value.report.errors] == ["LD420"]


def test_adapters_that_never_train_are_named_after_k_steps():
    model = _model()
    for p in model.parameters():  # the bug: everything frozen after apply_lora
        p.requires_grad = False
    model[0].lora_A.requires_grad = True  # one trainable factor, so the loop runs
    watch = loradoctor.Watchdog(model, on_error="warn", options=WatchOptions(zero_b_after=3))
    _train(model, watch, 4)
    codes = {f.code for f in watch.report.findings}
    assert "LD424" in codes
    f = next(f for f in watch.report.findings if f.code == "LD424")
    assert f.evidence["total"] == 2 and len(f.evidence["adapters"]) == 2


def test_a_frozen_loss_is_reported_and_a_moving_one_is_not():
    watch = loradoctor.Watchdog(None, on_error="warn")
    for _ in range(6):
        watch.step(2.5)
    assert [f.code for f in watch.report.findings] == ["LD423"]
    moving = loradoctor.Watchdog(None, on_error="warn")
    for i in range(6):
        moving.step(2.5 - 0.01 * i)
    assert not moving.report.findings


def test_a_collapse_to_uniform_is_reported_only_after_the_model_had_learned():
    vocab = 1000
    uniform = math.log(vocab)
    fresh = loradoctor.Watchdog(None, on_error="warn")
    fresh.state.vocab_size = vocab
    for _ in range(5):  # a model from scratch starts at log(V): that is not a collapse
        fresh.step(uniform)
    assert not [f for f in fresh.report.findings if f.code == "LD425"]
    watch = loradoctor.Watchdog(None, on_error="stop")
    watch.state.vocab_size = vocab
    for loss in (3.0, 2.8, uniform, uniform * 1.001, uniform * 0.999):
        watch.step(loss)
    assert [f.code for f in watch.report.findings] == ["LD425"]
    assert watch.should_stop


def test_a_loss_of_exactly_zero_is_reported():
    watch = loradoctor.Watchdog(None, on_error="warn")
    watch.step(1.2)
    watch.step(0.0)
    assert [f.code for f in watch.report.findings] == ["LD426"]
    assert watch.report.findings[0].evidence["step"] == 2


def test_a_zero_gradient_norm_is_reported():
    watch = loradoctor.Watchdog(None, on_error="warn")
    watch.step(1.0, grad_norm=0.0)
    assert [f.code for f in watch.report.findings] == ["LD422"]


def test_a_non_finite_gradient_norm_is_reported():
    watch = loradoctor.Watchdog(None, on_error="warn")
    watch.step(1.0, grad_norm=float("inf"))
    assert [f.code for f in watch.report.findings] == ["LD421"]
