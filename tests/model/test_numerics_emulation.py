"""fp16 and bf16 emulated on a CPU (fp32 matmuls and attention on the low-precision values)
against the same dtypes in torch's real CPU kernels.

On every numerics fixture (fixtures/numerics/cases.py: the tiny Llama, and the specimens with a
real fp16 overflow, a backward overflow, low headroom, attention-logit growth, underflowing
gradients, fp16 adapters) and on a LoRA that cannot run in fp16 at all, the LD3xx rules give the
same findings (code, severity, location), the same check statuses, the same verdict mark per
dtype and the same first inf/nan module with both dtypes emulated as with both real; the losses
agree within LOSS_RTOL. The emulation itself: a matmul's result is the fp32 product rounded
once to the dtype (past 65,504 it is inf, as a GPU's), an op whose operands are not all in the
dtype raises exactly as torch does, a GPU and `--real-dtypes` get the real kernels, and the
report says which way the numerics were measured.
"""

from __future__ import annotations

import math

import pytest
import torch

from loradoctor import api
from loradoctor.inputs.specs import parse_kwargs
from loradoctor.model.numerics import emulation
from loradoctor.model.numerics.emulation import Emulated, emulated_dtypes

from ..checks.test_numerics import CASES_MODULE, INVOCATIONS, _id
from ..conftest import FIXTURES

# Emulated and real losses agree to this share of the loss (the emulation sums in another order
# and rounds once: measured at most 3.0e-6 in fp16 and 1.5e-5 in bf16 on these fixtures);
# overflowed losses are non-finite in both.
LOSS_RTOL = 1e-4
FP32_MATH = f"{FIXTURES / 'numerics' / 'pipelines.py'}:apply_lora_fp32_math"


def _run(model_dir, apply, apply_args, real: bool):
    run = api.prepare(model=str(model_dir), apply=apply,
                      apply_args=parse_kwargs(list(apply_args)), select=["LD3"],
                      command="check-model", device="cpu", real_dtypes=real)
    return run.execute()


def _marks(verdict: str | None) -> dict[str, str]:
    """'trains in: fp32 ✓ · bf16 ✓ (...) · fp16 ✗ (...)' -> {dtype: mark}."""
    if verdict is None:
        return {}
    parts = verdict.removeprefix("trains in: ").split(" · ")
    return {p.split()[0]: p.split()[1] for p in parts}


def _same_judgement(real, emulated) -> None:
    def findings(report):
        return sorted((f.code, f.severity.value, f.location) for f in report.findings)
    assert findings(emulated) == findings(real)
    assert [(r.code, r.status) for r in emulated.results] == \
        [(r.code, r.status) for r in real.results]
    a, b = real.summary["numerics"], emulated.summary["numerics"]
    assert _marks(b["verdict"]) == _marks(a["verdict"]), (a["verdict"], b["verdict"])
    assert b["fp32_peak_module"] == a["fp32_peak_module"]
    for dtype, p in a["dtypes"].items():
        q = b["dtypes"][dtype]
        assert (q["status"], q["first_nonfinite"]) == (p["status"], p["first_nonfinite"]), dtype
        if p["loss"] is None or not math.isfinite(p["loss"]):
            assert q["loss"] is None or not math.isfinite(q["loss"]), dtype
        else:
            assert q["loss"] == pytest.approx(p["loss"], rel=LOSS_RTOL), dtype


@pytest.fixture
def emulate_both(monkeypatch):
    """bf16 emulated too, as on a CPU without native bf16 kernels."""
    monkeypatch.setattr(emulation, "native_on_cpu", lambda dtype: dtype == "fp32")


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=[_id(i) for i in INVOCATIONS])
def test_every_fixture_is_judged_the_same_emulated_as_real(invocation, emulate_both):
    (model, apply, apply_args), _cases = invocation
    model_dir = CASES_MODULE.models()[model]()
    real = _run(model_dir, apply, apply_args, real=True)
    emulated = _run(model_dir, apply, apply_args, real=False)
    assert real.summary["numerics"]["emulated"] == []
    assert emulated.summary["numerics"]["emulated"] == ["bf16", "fp16"]
    _same_judgement(real, emulated)


def test_a_lora_that_cannot_run_in_fp16_fails_the_same_way_emulated(tiny_llama_dir,
                                                                    emulate_both):
    real = _run(tiny_llama_dir, FP32_MATH, ("rank=8", "alpha=16"), real=True)
    emulated = _run(tiny_llama_dir, FP32_MATH, ("rank=8", "alpha=16"), real=False)
    _same_judgement(real, emulated)
    for dtype in ("bf16", "fp16"):
        p, q = real.summary["numerics"]["dtypes"][dtype], emulated.summary["numerics"]["dtypes"][dtype]
        assert p["status"] == "failed" and q["error"] == p["error"], dtype


def test_the_overflowing_module_is_the_same_and_named_in_the_report(emulate_both):
    from loradoctor.model.numerics.specimens import large_activation_dir
    apply = CASES_MODULE.MINIMIND
    real = _run(large_activation_dir(), apply, ("rank=8", "alpha=16"), real=True)
    emulated = _run(large_activation_dir(), apply, ("rank=8", "alpha=16"), real=False)
    for report in (real, emulated):
        (ld301,) = [f for f in report.findings if f.code == "LD301"]
        assert ld301.location == "model.layers.1.mlp.down_proj"
        assert report.summary["numerics"]["dtypes"]["fp16"]["first_nonfinite"] == \
            "model.layers.1.mlp.down_proj"


def test_a_matmul_is_the_fp32_product_rounded_once_and_overflows_to_inf():
    a = torch.randn(64, 300, generator=torch.Generator().manual_seed(0)).half()
    b = torch.randn(300, 48, generator=torch.Generator().manual_seed(1)).half()
    with Emulated(torch.float16) as mode:
        got = a @ b
        big = (a * 200) @ (b * 200)
    assert mode.calls == 2
    assert got.dtype == torch.float16
    assert torch.equal(got, (a.float() @ b.float()).half())
    assert torch.isinf(big).any() and torch.equal(big, ((a * 200).float() @ (b * 200).float()).half())


def test_its_backward_and_attention_are_emulated_too():
    q = torch.randn(2, 4, 16, 8, dtype=torch.float16, requires_grad=True)
    w = torch.randn(8, 8, dtype=torch.float16, requires_grad=True)
    with Emulated(torch.float16) as mode:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True) @ w
        out.float().sum().backward()
    assert q.grad.dtype == torch.float16 and w.grad.dtype == torch.float16
    assert mode.calls >= 5  # attention forward and backward, the matmul and its two gradients


def test_operands_not_all_in_the_dtype_raise_as_torch_does():
    a, b = torch.ones(4, 4, dtype=torch.float16), torch.ones(4, 4)
    with pytest.raises(RuntimeError) as real:
        a @ b
    with Emulated(torch.float16) as mode, pytest.raises(RuntimeError) as emulated:
        a @ b
    assert str(emulated.value) == str(real.value)
    assert mode.calls == 0


def test_only_a_cpus_slow_dtypes_are_emulated(monkeypatch):
    assert emulated_dtypes("cuda") == () and emulated_dtypes("cuda:1") == ()
    assert emulated_dtypes("cpu", real=True) == ()
    monkeypatch.setattr(emulation, "native_on_cpu", lambda dtype: dtype != "fp16")
    assert emulated_dtypes("cpu") == ("fp16",)
    monkeypatch.setattr(emulation, "native_on_cpu", lambda dtype: dtype == "fp32")
    assert emulated_dtypes("cpu") == ("bf16", "fp16")


def test_the_report_says_how_the_numerics_were_measured(cli, tiny_llama_dir, emulate_both):
    args = ["check-model", "--model", tiny_llama_dir, "--apply", CASES_MODULE.MINIMIND,
            "--select", "LD300"]
    emulated, real = cli(*args), cli(*args, "--real-dtypes")
    assert "against fp32; bf16 and fp16 emulated on CPU" in emulated.out
    assert "emulated" not in real.out
    assert emulated.code == real.code == 0
