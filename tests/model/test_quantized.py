"""QLoRA bases (bitsandbytes 4-bit and 8-bit, real, on CPU) measured as they train and left as
found.

The textbook QLoRA model (4-bit NF4 computing in bf16, `prepare_model_for_kbit_training`,
PEFT LoRA r=8 on every linear layer) passes every check-model rule, with train steps, and every
quantized layer's state (codes, scales, quant state, bias, 8-bit CB/SCB, flags) is bit for bit
what it was; also at widths bitsandbytes' CPU layout cannot hold (hidden 40), and in 8-bit.
The quantized weights are read back in every layout without writing into a layer, and a
merge's requantization is exactly what PEFT's `merge_and_unload` stores.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import loradoctor
from loradoctor.findings import Severity
from loradoctor.model import quantized
from loradoctor.model.quantized_state import differences, fingerprint
from loradoctor.model.safety import changes, snapshot

pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.filterwarnings("ignore")

PEFT = "r=8,lora_alpha=16,target_modules=all-linear"


def qlora(path, bits: str):
    """The QLoRA recipe: loaded quantized, prepared for k-bit training, PEFT on every linear."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from loradoctor.inputs.pretrained import load_model
    torch.manual_seed(0)
    model = prepare_model_for_kbit_training(load_model(path, "fp32", "cpu", bits))
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            task_type="CAUSAL_LM"))


def above_info(report) -> list[str]:
    return [f"{f.code} {f.severity.value}: {f.message}" for f in report.findings
            if f.severity is not Severity.INFO]


def summaries(report) -> dict[str, str]:
    return {r.code: r.summary for r in report.results}


@pytest.mark.parametrize("name,bits", [("w64", "4bit"), ("w40", "4bit"), ("w64", "8bit"),
                                       ("w40", "8bit")])
def test_a_qlora_model_passes_every_rule_and_is_left_bit_for_bit_as_found(qlora_base_dirs,
                                                                          name, bits):
    model = qlora(qlora_base_dirs[name], bits)
    before, state = fingerprint(model), snapshot(model)
    report = loradoctor.check(model=model, train_steps=2)
    assert not above_info(report), above_info(report)
    assert summaries(report)["LD404"].startswith("B got a gradient in 14 of 14 adapters")
    assert differences(before, fingerprint(model)) == []
    assert changes(model, state) == []
    measured = report.summary["quantized_base"]
    assert measured["kind"] == bits and measured["layers"] == 14
    assert measured["packed_for_cpu"] == 0


def test_the_gradient_flows_as_in_training_where_an_eval_forward_would_have_stopped_it(
        qlora_base_dirs):
    """The issue's false stop: an eval forward without gradients rewrites a 4-bit layer into
    bitsandbytes' CPU layout, whose matmul has no backward; loradoctor never takes it."""
    model = qlora(qlora_base_dirs["w64"], "4bit")
    report = loradoctor.check(model=model, select="LD4")
    assert not above_info(report)
    assert "14 of 14" in summaries(report)["LD404"]
    assert not any(quantized.packed_for_cpu(m)
                   for m in quantized.quantized_layers(model).values())


def test_a_model_an_eval_forward_already_rewrote_is_an_error_and_stays_as_found(
        qlora_base_dirs):
    """The user's own eval forward without gradients (generate(), an evaluation under no_grad)
    rewrote the 4-bit layers into bitsandbytes' CPU layout before the gate: training it now
    is broken, and loradoctor says so without undoing or redoing the layout."""
    import bitsandbytes.functional as bnb_f
    if not bnb_f.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never uses its CPU layout")
    model = qlora(qlora_base_dirs["w64"], "4bit")
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.arange(16).view(1, 16))
    model.train()
    before = fingerprint(model)
    report = loradoctor.check(model=model, select="LD404")
    (packed, *rest) = [f for f in report.findings if f.code == "LD404"]
    assert packed.severity is Severity.ERROR
    assert packed.message.startswith("14 of 14 4-bit layers are already in bitsandbytes' CPU "
                                     "inference layout")
    assert rest and "exactly zero in 10 of 14 adapters" in rest[0].message
    assert report.summary["quantized_base"]["packed_for_cpu"] == 14
    assert differences(before, fingerprint(model)) == []


def test_the_weights_are_read_back_in_every_layout_without_writing_into_a_layer(
        qlora_base_dirs):
    import bitsandbytes.functional as bnb_f

    model = qlora(qlora_base_dirs["w64"], "4bit")
    layers = quantized.quantized_layers(model)
    assert len(layers) == 14
    before = fingerprint(model)
    weights = {n: quantized.dequantized_weight(m) for n, m in layers.items()}
    for name, layer in layers.items():
        expected = bnb_f.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        assert torch.equal(weights[name], expected)
        assert weights[name].shape == (layer.out_features, layer.in_features)
    assert differences(before, fingerprint(model)) == []
    if not bnb_f.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never uses its CPU layout")
    packed = copy.deepcopy(model)
    packed.eval()
    with torch.no_grad():  # what loradoctor never does: bitsandbytes rewrites the layers
        packed(input_ids=torch.arange(16).view(1, 16))
    for name, layer in quantized.quantized_layers(packed).items():
        assert quantized.packed_for_cpu(layer)
        got = quantized.dequantized_weight(layer)
        # the CPU layout keeps the block scales in bf16: within bf16's rounding of them
        assert (got - weights[name]).norm() <= 4e-3 * weights[name].norm()


def test_an_8bit_weight_is_read_wherever_bitsandbytes_keeps_its_codes(qlora_base_dirs):
    model = qlora(qlora_base_dirs["w64"], "8bit")
    layer = next(iter(quantized.quantized_layers(model).values()))
    assert quantized.quant_kind(layer) == "8bit"
    first = quantized.dequantized_weight(layer)
    probe = copy.deepcopy(layer)
    probe(torch.randn(2, layer.in_features))  # the first forward moves CB/SCB to its state
    assert probe.weight.CB is None and probe.state.CB is not None
    assert torch.equal(quantized.dequantized_weight(probe), first)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_the_requantized_merge_is_what_peft_merge_and_unload_stores(qlora_base_dirs, bits):
    model = qlora(qlora_base_dirs["w64"], bits)
    wrapper = model.base_model.model.model.layers[0].self_attn.q_proj
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        wrapper.lora_B["default"].weight.copy_(
            torch.randn(wrapper.lora_B["default"].weight.shape, generator=gen) * 0.05)
    base = wrapper.base_layer
    delta = wrapper.scaling["default"] * (wrapper.lora_B["default"].weight
                                          @ wrapper.lora_A["default"].weight).detach()
    expected = quantized.requantized_weight(base, quantized.dequantized_weight(base) + delta)
    merged = copy.deepcopy(model).merge_and_unload()
    got = quantized.dequantized_weight(merged.model.layers[0].self_attn.q_proj)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


def test_merging_into_a_4bit_base_reports_the_requantization_error_beside_the_effect(
        qlora_base_dirs):
    model = qlora(qlora_base_dirs["w64"], "4bit")
    report = loradoctor.check(model=model, select="LD5")
    assert not above_info(report)
    assert summaries(report)["LD502"].startswith("merged W + scaling * B @ A")
    (note,) = [f for f in report.findings if f.code == "LD502"]
    assert note.severity is Severity.INFO
    evidence = note.evidence
    assert evidence["requantization_error"] > 0.5 * evidence["adapter_effect"] > 0
    assert evidence["kept"] < 0.5
    assert note.message.startswith("merge_and_unload() on the 4-bit NF4 model")


def test_merging_into_an_8bit_base_keeps_the_adapter(qlora_base_dirs):
    model = qlora(qlora_base_dirs["w64"], "8bit")
    report = loradoctor.check(model=model, select="LD502")
    assert report.findings == []
    assert "; requantized into the 8-bit base" in summaries(report)["LD502"]


def test_numerics_on_a_quantized_base_set_the_compute_dtype_and_say_so(qlora_base_dirs):
    model = qlora(qlora_base_dirs["w64"], "4bit")
    before = fingerprint(model)
    report = loradoctor.check(model=model, select="LD3", dtypes="fp32,bf16,fp16")
    assert not above_info(report)
    ld300 = next(r for r in report.results if r.code == "LD300")
    assert "quantized" in ld300.views[0].title
    assert report.summary["quantized_base"]["numerics"].startswith("the 14 quantized layers")
    assert differences(before, fingerprint(model)) == []


def test_check_model_quantize_4bit_with_peft_from_the_cli(cli, qlora_base_dirs):
    result = cli("check-model", "--model", qlora_base_dirs["w40"], "--quantize", "4bit",
                 "--peft", PEFT, "--json")
    assert result.code == 0, result.out
    data = json.loads(result.out)
    assert [f for f in data["findings"] if f["severity"] != "info"] == []
    measured = data["summary"]["quantized_base"]
    assert measured["kind"] == "4bit" and measured["quant_type"] == "nf4"
    assert measured["prepared_for_kbit_training"] is True
    assert "Failed to load CPU gemm_4bit_forward" not in result.out


def test_quantize_takes_4bit_or_8bit_and_a_model_directory(cli, qlora_base_dirs):
    from ..helpers import assert_clean_input_error
    assert_clean_input_error(cli("check-model", "--model", qlora_base_dirs["w64"],
                                 "--quantize", "3bit"), "--quantize '3bit'", "4bit, 8bit")
    with pytest.raises(loradoctor.InputError, match="a model object"):
        loradoctor.check(model=torch.nn.Linear(2, 2), quantize="4bit")
