"""Adapter discovery and the static analysis of patched forwards, on real (tiny) models.

Every common shape of LoRA must be found with the right factors, rank, scaling and name:
MiniMind's `module.lora` + patched forward, wrapper modules (any child names), loralib's
Linear subclass, transposed factors, PEFT's LoraLayer, and adapters the model never registered.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from loradoctor.model.adapters import discover
from loradoctor.model.layer_names import canonical, kind_of, layer_of
from loradoctor.model.references import class_patched, forward_refs
from loradoctor.inputs.pretrained import load_model
from loradoctor.inputs.specs import load_spec

from ..conftest import FIXTURES, PIPELINES

MINIMIND = PIPELINES / "minimind_lora.py"
LORA = FIXTURES / "lora"


def _adapted(model_dir, spec, **kwargs):
    model = load_model(model_dir)
    returned = load_spec(spec)(model, **kwargs)
    return returned if isinstance(returned, nn.Module) else model


@pytest.mark.parametrize("fn, style, owner", [
    ("apply_lora_default_args", "attached", "model.layers.0.self_attn.q_proj.lora"),
    ("apply_lora_factory", "attached", "model.layers.0.self_attn.q_proj.lora"),
    ("apply_lora_partial", "attached", "model.layers.0.self_attn.q_proj.lora"),
    ("apply_lora_wrapper", "wrapper", "model.layers.0.self_attn.q_proj"),
])
def test_it_finds_every_minimind_style_adapter_with_its_rank_scaling_and_name(
        tiny_llama_dir, fn, style, owner):
    model = _adapted(tiny_llama_dir, f"{MINIMIND}:{fn}", rank=4, alpha=16)
    found = discover(model)
    assert len(found.adapters) == 14  # 7 linears x 2 layers, lm_head skipped
    a = found.adapters[0]
    assert (a.name, a.style, a.owner_name) == ("model.layers.0.self_attn.q_proj", style, owner)
    assert (a.rank, a.declared_scaling) == (4, 4.0)
    assert a.a_matrix().shape == (4, 64) and a.b_matrix().shape == (64, 4)
    assert a.registered
    assert len(found.linears) == 15 and "lm_head" in found.linears


def test_it_finds_peft_adapters_under_the_base_models_names(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(tiny_llama_dir),
                           LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    found = discover(model)
    assert [a.name for a in found.adapters] == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    a = found.adapters[0]
    assert (a.style, a.rank, a.declared_scaling) == ("peft", 8, 4.0)
    assert a.A_name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert "model.layers.0.self_attn.k_proj" in found.linears  # not adapted, still counted


@pytest.mark.parametrize("fn, transposed, scaling", [
    ("loralib_style", False, 2.0), ("transposed", True, 2.0), ("odd_names", False, 2.0)])
def test_it_finds_adapters_by_shape_whatever_the_names(tiny_llama_dir, fn, transposed, scaling):
    model = _adapted(tiny_llama_dir, f"{LORA / 'shapes.py'}:{fn}")
    found = discover(model)
    assert len(found.adapters) == 14
    a = next(x for x in found.adapters if x.name == "model.layers.0.mlp.down_proj")
    assert a.transposed is transposed
    assert (a.rank, a.in_features, a.out_features) == (8, 160, 64)
    assert a.declared_scaling == scaling


def test_adapters_held_only_by_a_closure_are_found_and_marked_unregistered(tiny_llama_dir):
    model = _adapted(tiny_llama_dir, f"{LORA / 'ld501.py'}:bad")
    found = discover(model)
    assert len(found.adapters) == 14
    assert all(a.style == "unregistered" and not a.registered for a in found.adapters)
    assert not any(p.requires_grad for p in model.parameters())  # the optimizer sees nothing


def test_a_wrapper_around_a_wrapper_is_two_adapters_on_one_layer(tiny_llama_dir):
    model = _adapted(tiny_llama_dir, f"{LORA / 'ld203.py'}:bad_wrapped_twice")
    found = discover(model)
    names = [a.name for a in found.adapters]
    assert len(names) == 28 and len(set(names)) == 14
    assert sum(a.nested for a in found.adapters) == 14


def test_the_static_analysis_reads_closure_cells_defaults_and_partial_arguments(tiny_llama_dir):
    bug = _adapted(tiny_llama_dir, f"{MINIMIND}:apply_lora")
    names = {id(m): n for n, m in bug.named_modules()}
    q = bug.get_submodule("model.layers.0.self_attn.q_proj")
    refs = forward_refs(q)
    assert [(via, names[id(m)]) for via, m in refs.calls] == [
        ("closure variable original_forward", "model.layers.1.mlp.down_proj")]
    assert [(via, names[id(m)]) for via, m in refs.uses] == [
        ("closure variable lora", "model.layers.1.mlp.down_proj.lora")]
    assert refs.levels == 1

    for fn, via in [("apply_lora_default_args", "default argument original_forward"),
                    ("apply_lora_partial", "partial argument 0"),
                    ("apply_lora_factory", "closure variable original_forward")]:
        fixed = _adapted(tiny_llama_dir, f"{MINIMIND}:{fn}")
        q = fixed.get_submodule("model.layers.0.self_attn.q_proj")
        refs = forward_refs(q)
        assert [(v, m) for v, m in refs.calls] == [(via, q)], fn
        assert refs.uses[0][1] is q.lora


def test_a_patch_of_a_patch_counts_two_levels(tiny_llama_dir):
    model = _adapted(tiny_llama_dir, f"{LORA / 'ld203.py'}:bad")
    assert forward_refs(model.get_submodule("model.layers.0.mlp.up_proj")).levels == 2
    assert forward_refs(model.get_submodule("lm_head")) is None


def test_a_forward_replaced_on_the_class_is_detected_and_real_models_are_not_flagged(
        tiny_llama_dir, tiny_qwen3_dir):
    for d in (tiny_llama_dir, tiny_qwen3_dir):
        assert class_patched(load_model(d)) == []
    original = nn.Linear.forward
    try:
        model = _adapted(tiny_llama_dir, f"{LORA / 'ld202.py'}:bad")
        (info,) = class_patched(model)
        assert info["class"] == "torch.nn.modules.linear.Linear"
        assert info["function"] == "_linear_with_lora"
        assert info["instances"] == 15 + 28  # 15 base linears + A and B of 14 adapters
    finally:
        nn.Linear.forward = original


@pytest.mark.parametrize("name, kind, layer", [
    ("model.layers.3.self_attn.q_proj", "q", 3), ("model.layers.10.mlp.down_proj", "down", 10),
    ("transformer.h.2.attn.c_attn", "qkv", 2), ("transformer.h.2.mlp.c_proj", "down", 2),
    ("transformer.h.2.attn.c_proj", "o", 2), ("lm_head", "lm_head", None),
    ("model.layers.0.mlp.gate_proj", "gate", 0), ("model.layers.0.block_sparse_moe.gate", "gate", 0),
    ("model.layers.1.self_attn.rotary", "other", 1),
])
def test_layers_are_classified_by_kind_and_index(name, kind, layer):
    assert (kind_of(name), layer_of(name)) == (kind, layer)


def test_peft_prefixes_are_stripped_from_locations():
    assert canonical("base_model.model.model.layers.0.mlp.up_proj") == "model.layers.0.mlp.up_proj"
    assert canonical("model.layers.0.mlp.up_proj") == "model.layers.0.mlp.up_proj"


def test_set_factors_writes_through_a_transposed_layout(tiny_llama_dir):
    model = _adapted(tiny_llama_dir, f"{LORA / 'shapes.py'}:transposed")
    a = discover(model).adapters[0]
    A, B = torch.ones(a.rank, a.in_features), torch.full((a.out_features, a.rank), 2.0)
    a.set_factors(A, B)
    assert torch.equal(a.A, A.t()) and torch.equal(a.B, B.t())


class _RawPair(nn.Module):
    """A wrapper holding the base Linear and two raw parameters, in either layout and order."""

    def __init__(self, base, rank, transposed, names, b_first):
        super().__init__()
        self.base = base
        out_f, in_f = base.weight.shape
        a = torch.randn(in_f, rank) if transposed else torch.randn(rank, in_f)
        b = torch.randn(rank, out_f) if transposed else torch.randn(out_f, rank)
        pairs = [(names[0], a), (names[1], b)]
        for name, t in (pairs[::-1] if b_first else pairs):
            self.register_parameter(name, nn.Parameter(t))



@settings(max_examples=60, deadline=None)
@given(in_f=st.integers(1, 24), out_f=st.integers(1, 24), data=st.data(),
       transposed=st.booleans(), b_first=st.booleans(),
       names=st.sampled_from([("lora_A", "lora_B"), ("A", "B"), ("down", "up"),
                              ("lora_down", "lora_up"), ("w_a", "w_b")]))
def test_any_low_rank_pair_is_found_in_the_right_orientation(in_f, out_f, data, transposed,
                                                             b_first, names):
    rank = data.draw(st.integers(1, min(in_f, out_f)))
    wrapper = _RawPair(nn.Linear(in_f, out_f), rank, transposed, names, b_first)
    (found,) = discover(nn.Sequential(wrapper)).adapters
    assert found.rank == rank
    assert found.a_matrix().shape == (rank, in_f) and found.b_matrix().shape == (out_f, rank)
    assert found.A is getattr(wrapper, names[0]) and found.B is getattr(wrapper, names[1])
