"""How layers are named: the base model's name of an adapted layer, its kind and its index.

Pure string work (no torch), shared by discovery, the coverage rule (LD210), the PEFT target
matching (LD205) and the saved adapter's keys.
"""

from __future__ import annotations

import re

PEFT_PREFIX = "base_model.model."  # what PeftModel adds in front of every base module name

# Kinds of linear layer for the coverage table, from the last part of the module name.
KIND_PATTERNS = [
    ("qkv", r"(qkv_proj|qkv|c_attn|query_key_value|Wqkv|in_proj)"),
    ("q", r"(q_proj|query|q|wq|q_lin|to_q)"),
    ("k", r"(k_proj|key|k|wk|k_lin|to_k)"),
    ("v", r"(v_proj|value|v|wv|v_lin|to_v)"),
    ("o", r"(o_proj|out_proj|wo|out_lin|to_out|dense|c_proj)"),
    ("gate_up", r"(gate_up_proj)"),
    ("gate", r"(gate_proj|w1|wi_0|gate)"),
    ("up", r"(up_proj|w3|wi_1|fc1|c_fc|fc_in|up|wi)"),
    ("down", r"(down_proj|w2|fc2|fc_out|down)"),
    ("lm_head", r"(lm_head|embed_out|output|output_layer)"),
]
KIND_ORDER = ["qkv", "q", "k", "v", "o", "gate_up", "gate", "up", "down", "other", "lm_head"]
_LAYER_INDEX = re.compile(r"\.(\d+)(?:\.|$)")


def canonical(name: str) -> str:
    """The name a layer has in the base model (PEFT's wrapper prefix and base child removed)."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name


def kind_of(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    for kind, pattern in KIND_PATTERNS:
        if re.fullmatch(pattern, last, flags=re.IGNORECASE):
            if kind == "o" and last in ("dense", "c_proj") and ".mlp." in f".{name}.":
                return "down"  # GPT-2 / NeoX name the MLP output dense / c_proj too
            return kind
    return "other"


def layer_of(name: str) -> int | None:
    found = _LAYER_INDEX.findall(name)
    return int(found[0]) if found else None


def layer_ranges(values: list[int]) -> str:
    """`layers 0-3, 7, 9-11` for sorted layer indexes."""
    out, start, prev = [], None, None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = v
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    return "layers " + ", ".join(out)
