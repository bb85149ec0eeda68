"""Memory given back between check-model's measurements (`model/memory.py`): the base logits
are let go once the identity check has read them, and the rules that follow still agree.
"""

from __future__ import annotations

from loradoctor import engine, registry
from loradoctor.context import ModelContext
from loradoctor.model.memory import release, releasing


def test_the_base_logits_are_released_after_the_identity_check_and_nothing_rereads_them(
        tiny_llama_dir):
    ctx = ModelContext(tiny_llama_dir, peft_kwargs={"r": 4, "lora_alpha": 8,
                                                    "target_modules": ["q_proj", "v_proj"]})
    ctx.validate_inputs()
    assert ctx.base_logits is not None  # taken before the adapters were applied
    report = engine.run("check-model", registry.select(registry.MODEL_RULES, ["LD4", "LD5"]),
                        ctx)
    assert ctx.base_logits is None
    assert report.exit_code == 0, [f.message for f in report.findings]
    ld401 = next(r for r in report.results if r.code == "LD401")
    assert ld401.summary.startswith("logits equal the base logits at init")


def test_releasing_runs_after_the_measurement_even_when_it_raises():
    calls = []

    @releasing
    def measurement(fail):
        calls.append(fail)
        if fail:
            raise ValueError("boom")
        return 3

    assert measurement(False) == 3
    try:
        measurement(True)
    except ValueError:
        pass
    assert calls == [False, True]
    release()  # no-op where there is no glibc
