"""The numerics measurement itself: the user's model left exactly as found, the first inf module,
the comparisons against fp32, and the verdict drawn from them.

Real tiny models and real passes throughout; the last tests feed the rules a `Measurement`
(our own data object) to reach branches no small real model produces on this machine, such
as a dtype the device cannot run.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from loradoctor.inputs.pretrained import load_model
from loradoctor.model.numerics.passes import (FP16_MAX, DtypePass, Measurement, NumericsOptions,
                                              Trainable, dtype_support, measure)
from loradoctor.model.numerics.recorder import ModuleStat
from loradoctor.model.numerics.verdict import dtype_verdicts, verdict_line

from ..conftest import PIPELINES

sys.path.insert(0, str(PIPELINES))
from minimind_lora import apply_lora_default_args  # noqa: E402


def _probe(vocab: int, batch: int = 2, tokens: int = 32) -> dict:
    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _snapshot(model) -> dict:
    """Everything the contract says must be left as found, by identity and by value."""
    return {
        "params": [(n, id(p), p.data_ptr(), p.dtype, p.requires_grad, p.detach().clone(),
                    id(p.grad) if p.grad is not None else None)
                   for n, p in model.named_parameters()],
        "buffers": [(n, id(b), b.dtype, b.detach().clone()) for n, b in model.named_buffers()],
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "rng": torch.random.get_rng_state().clone(),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert len(before["params"]) == len(after["params"])
    for b, a in zip(before["params"], after["params"]):
        assert b[:5] == a[:5], b[0]  # name, object, storage, dtype, requires_grad
        assert torch.equal(b[5], a[5]), b[0]  # values, bitwise
        assert b[6] == a[6], b[0]  # the very same .grad object (or None)
    for b, a in zip(before["buffers"], after["buffers"]):
        assert b[:3] == a[:3] and torch.equal(b[3], a[3]), b[0]
    assert before["modes"] == after["modes"]
    assert torch.equal(before["rng"], after["rng"])


@pytest.fixture
def tiny_lora(tiny_llama_dir):
    torch.manual_seed(0)
    model = load_model(tiny_llama_dir, "fp32", "cpu")
    apply_lora_default_args(model, rank=8, alpha=16)
    return model


def test_the_passes_leave_the_users_model_exactly_as_found(tiny_lora):
    model = tiny_lora
    model.train()
    model.model.layers[0].eval()  # a mixed mode tree must come back mixed
    lora_b = model.model.layers[0].self_attn.q_proj.lora.B.weight
    lora_b.grad = torch.full_like(lora_b, 0.5)  # a gradient the user already had
    probe = _probe(model.config.vocab_size)
    with torch.no_grad():
        logits_before = model(**probe).logits.clone()
    torch.manual_seed(123)
    before = _snapshot(model)
    m = measure(model, probe, dtypes=("fp32", "fp16", "bf16"), device="cpu")
    assert all(p.ran for p in m.passes.values())
    _assert_same(before, _snapshot(model))
    assert torch.equal(lora_b.grad, torch.full_like(lora_b, 0.5))
    with torch.no_grad():
        assert torch.equal(model(**probe).logits, logits_before)


def test_a_mixed_precision_model_keeps_each_tensors_own_dtype(tiny_llama_dir):
    from loradoctor.model.numerics.specimens import apply_lora_fp32_adapters

    model = load_model(tiny_llama_dir, "fp32", "cpu")
    apply_lora_fp32_adapters(model, rank=8, alpha=16, base_dtype="fp16")
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float16, torch.float32}
    before = _snapshot(model)
    measure(model, _probe(model.config.vocab_size), dtypes=None, device="cpu")
    _assert_same(before, _snapshot(model))


def test_the_first_inf_module_is_the_innermost_one_in_execution_order(tiny_lora):
    from loradoctor.model.numerics.specimens import large_activation_dir

    model = load_model(large_activation_dir(), "fp32", "cpu")
    apply_lora_default_args(model, rank=8, alpha=16)
    m = measure(model, _probe(model.config.vocab_size), dtypes=None, device="cpu")
    fp16, fp32, bf16 = m.passes["fp16"], m.fp32, m.passes["bf16"]
    first = fp16.first_bad_forward
    assert first.name == "model.layers.1.mlp.down_proj"  # not its parents mlp / layers.1
    assert math.isinf(first.peak)
    assert fp32.by_name[first.name].finite and fp32.by_name[first.name].peak > FP16_MAX
    # everything that ran before it in fp16 was finite
    assert all(s.finite for s in fp16.modules if s.order < first.order)
    assert fp32.finite and bf16.finite
    assert bf16.loss_rel_diff < 1e-3 and bf16.grad_cosine > 0.99


def test_a_parent_that_returns_its_childs_tensor_reports_the_same_peak(tiny_lora):
    m = measure(tiny_lora, _probe(512), dtypes=("fp32",), device="cpu")
    by = m.fp32.by_name
    assert by["model.layers.0.mlp"].peak == by["model.layers.0.mlp.down_proj"].peak
    assert by["model.layers.0.mlp.down_proj"].order < by["model.layers.0.mlp"].order
    assert by["model.layers.0.mlp"].grad_peak == by["model.layers.0.mlp.down_proj"].grad_peak


def test_fp16_without_loss_scaling_loses_small_gradients(tiny_llama_dir):
    from loradoctor.model.numerics.specimens import small_gradients_dir

    model = load_model(small_gradients_dir(), "fp32", "cpu")
    apply_lora_default_args(model, rank=8, alpha=16)
    m = measure(model, _probe(512), dtypes=("fp32", "fp16"), device="cpu")
    fp16 = m.passes["fp16"]
    assert fp16.grad_nonzero_fp32 > 0
    assert 0.05 < fp16.grad_lost_fraction < 1
    assert fp16.grad_nonfinite == 0


def test_only_the_dtypes_asked_for_run_and_fp32_always_does(tiny_lora):
    m = measure(tiny_lora, _probe(512), dtypes=("bf16",), device="cpu")
    assert list(m.passes) == ["fp32", "bf16"]
    assert m.requested == ("bf16",)


def test_a_device_without_cuda_reports_why_instead_of_raising():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    reason = dtype_support("fp16", "cuda")
    assert reason and "cuda" in reason
    assert dtype_support("fp16", "cpu") is None and dtype_support("fp32", "cuda") is None


# --- the verdict and the rules on a given measurement ------------------------------------------


def _measurement(fp16: DtypePass, bf16: DtypePass | None = None) -> Measurement:
    fp32 = DtypePass("fp32", loss=2.0, backward=True, modules=[
        ModuleStat("model.layers.0.mlp.down_proj", 0, 30_000.0, True, 5, 0.01, True),
        ModuleStat("lm_head", 1, 12.0, True, 0, 0.001, True)])
    passes = {"fp32": fp32, "bf16": bf16 or DtypePass("bf16", loss=2.0, backward=True,
                                                      loss_rel_diff=0.0, grad_cosine=1.0,
                                                      modules=fp32.modules),
              "fp16": fp16}
    return Measurement(("fp32", "bf16", "fp16"), True, "cpu", (1, 8), "test", passes,
                       [Trainable("lora.weight", "fp32", 8)])


def test_the_verdict_line_carries_the_measured_figures():
    fp16 = DtypePass("fp16", loss=float("nan"), backward=True, modules=[
        ModuleStat("model.layers.0.mlp.down_proj", 0, float("inf"), False),
        ModuleStat("lm_head", 1, float("nan"), False)])
    m = _measurement(fp16)
    m.fp32.modules[0].peak = 71_234.0
    line = verdict_line(dtype_verdicts(m, NumericsOptions()))
    assert line == ("trains in: fp32 ✓ · bf16 ✓ (loss within 0%) · fp16 ✗ (inf at "
                    "model.layers.0.mlp.down_proj, fp32 peak 71,234 > 65,504)")


def test_low_headroom_and_lost_gradients_are_a_caveat_not_a_failure():
    fp16 = DtypePass("fp16", loss=2.0, backward=True, loss_rel_diff=0.001, grad_cosine=0.99,
                     grad_nonzero_fp32=1000, grad_lost=200, modules=[
                         ModuleStat("model.layers.0.mlp.down_proj", 0, 30_000.0, True, 5, 0.01,
                                    True)])
    (fp32, bf16, f16) = dtype_verdicts(_measurement(fp16), NumericsOptions())
    assert f16.status == "warn"
    assert "headroom 2.2x to 65,504" in f16.reason and "20% of gradients underflow" in f16.reason
    assert dtype_verdicts(_measurement(fp16), NumericsOptions(fp16_headroom=2,
                                                              grad_lost_warn=0.5))[2].status == "ok"


def _run_rules(measurement: Measurement, codes: list[str]):
    from loradoctor import engine, registry
    from loradoctor.context import ModelContext

    ctx = ModelContext(model_dir=".")  # nothing is loaded: the measurement is given
    ctx.memo("numerics", lambda: measurement)
    return engine.run("check-model", registry.select(registry.MODEL_RULES, codes), ctx)


def test_a_dtype_the_device_cannot_run_skips_its_rules_with_the_reason():
    fp16 = DtypePass("fp16", status="unsupported", error="fp16 matmul does not run on cpu: ...")
    report = _run_rules(_measurement(fp16), ["LD301", "LD303", "LD304"])
    statuses = {r.code: r.status.value for r in report.results}
    assert statuses == {"LD301": "skip", "LD303": "pass", "LD304": "skip"}
    skipped = [f for f in report.findings if f.code == "LD002"]
    assert len(skipped) == 2 and "fp16 matmul does not run on cpu" in skipped[0].message
    assert report.exit_code == 0


def test_a_gradient_that_overflows_in_fp16_is_an_error_naming_its_module():
    fp16 = DtypePass("fp16", loss=2.0, backward=True, loss_rel_diff=0.0, grad_cosine=float("nan"),
                     modules=[ModuleStat("model.layers.0.mlp.down_proj", 0, 30_000.0, True, 5,
                                         float("inf"), False),
                              ModuleStat("lm_head", 1, 12.0, True, 0, 0.001, True)])
    report = _run_rules(_measurement(fp16), ["LD304"])
    (finding,) = report.findings
    assert finding.code == "LD304" and finding.severity.value == "error"
    assert finding.location == "model.layers.0.mlp.down_proj"
    assert "inf in the gradient" in finding.message
