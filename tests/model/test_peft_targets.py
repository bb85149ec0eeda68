"""PEFT config entries matched one by one with PEFT's own rules (`model/peft_targets.py`),
checked against what PEFT itself adapts on a real model.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loradoctor.model.peft_targets import _alternatives, check_configs, closest, original_names

LEAVES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NAMES = ["model", "model.embed_tokens", "model.layers", "lm_head"] + [
    f"model.layers.{i}.{block}.{leaf}" for i in range(3)
    for block, leaves in (("self_attn", LEAVES[:4]), ("mlp", LEAVES[4:])) for leaf in leaves]


@settings(max_examples=80, deadline=None)
@given(real=st.lists(st.sampled_from(LEAVES), min_size=1, max_size=7, unique=True),
       made_up=st.lists(st.from_regex(r"[a-z]{2,8}_[a-z]{2,6}", fullmatch=True), max_size=3,
                        unique=True))
def test_exactly_the_entries_no_module_ends_with_are_reported(real, made_up):
    made_up = [m for m in made_up if not any(n == m or n.endswith("." + m) for n in NAMES)]
    result = check_configs({"default": {"target_modules": real + made_up}}, NAMES, "test")
    assert sorted(u.entry for u in result.unmatched) == sorted(made_up)
    assert result.checked["target_modules"] == len(real) + len(made_up)


@pytest.mark.parametrize("pattern, dead", [
    (r".*\.(q_proj|v_prj)", ["v_prj"]),
    (r"model\.layers\.\d+\.self_attn\.(?:q_proj|k_proj|vproj)", ["vproj"]),
    (r".*\.(q_proj|v_proj)|.*\.mlp\.gate_prj", [r".*\.mlp\.gate_prj"]),
    (r".*\.(q_proj|v_proj)", []),
])
def test_each_alternative_of_a_target_regex_is_matched_on_its_own(pattern, dead):
    result = check_configs({"default": {"target_modules": pattern}}, NAMES, "test")
    assert [u.entry for u in result.unmatched] == dead
    assert all(u.pattern == pattern for u in result.unmatched)


def test_alternatives_keep_the_rest_of_the_pattern():
    assert _alternatives(r"a\.(b|c)\.d") == [("b", r"a\.(?:b)\.d"), ("c", r"a\.(?:c)\.d")]
    assert _alternatives(r"[|](x)") == [(r"[|](x)", r"[|](x)")]  # no alternation: one entry


def test_closest_names_have_as_many_parts_as_the_entry():
    assert closest("v_prj", NAMES)[0] == "v_proj"
    assert closest("self_attn.v_prj", NAMES)[0] == "self_attn.v_proj"
    assert closest(r"model\.layers\.\d+\.mlp\.gate_prj", NAMES)[0].endswith("mlp.gate_proj")


def test_what_is_reported_is_what_peft_leaves_out_on_a_real_model(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    names = original_names(model)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_prj", "down_proj"],
                        layers_to_transform=[1, 4])
    peft_model = get_peft_model(model, config)
    adapted = sorted(peft_model.base_model.targeted_module_names)
    assert original_names(peft_model.get_base_model()) == names  # wrappers' children left out
    result = check_configs(peft_model.peft_config, names, "test")
    assert sorted(result.matched["default"]) == sorted(
        n for n in names if n.endswith(("q_proj", "down_proj")))
    assert [n for n in result.matched["default"] if ".1." in n] == adapted
    assert [(u.field, u.entry) for u in result.unmatched] == [
        ("target_modules", "v_prj"), ("layers_to_transform", 4)]
