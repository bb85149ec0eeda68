"""Tokenizers for the chat-template families, built offline from the real Qwen3 vocabulary.

No hub is reachable, so each family's tokenizer is the real Qwen3 BPE vocabulary with that
family's special tokens added, its official chat template (vendored in `templates/`, see
`templates/NOTICE`) and its bos / eos / pad settings, as its released `tokenizer_config.json`
has them. The template's text, its special tokens and where they fall are the family's own;
only the ordinary words split into Qwen3's pieces. Qwen3 itself and SmolLM2 need no such
stand-in: `qwen3_tokenizer_dir()` and `smollm2_dir()` are the real ones.

`loradoctor.assets.family_tokenizers_dir() / name` is one family's tokenizer directory (Hugging
Face layout); `write_all` builds them all at once, into the cache, atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>",
          "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
GEMMA = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
MISTRAL_V3 = ["<s>", "</s>", "<unk>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]",
              "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]"]
DEEPSEEK = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
            "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"]
PHI4 = ["<|im_sep|>", "<|dummy_85|>"]  # <|endoftext|>, <|im_start|>, <|im_end|> are Qwen3's too


@dataclass(frozen=True)
class Family:
    """One family's tokenizer settings: its template file, the special tokens it adds to the
    Qwen3 vocabulary, and bos / eos / pad as its released tokenizer config sets them."""

    template: str
    special: tuple[str, ...]
    eos: str
    bos: str | None = None
    pad: str | None = None
    unk: str | None = None
    adds_bos: bool = False  # tokenizer(text) prepends BOS (add_bos_token: true)


FAMILIES: dict[str, Family] = {
    "llama3_1": Family("llama3_1.jinja", tuple(LLAMA3), "<|eot_id|>", "<|begin_of_text|>",
                       adds_bos=True),
    "llama3_2": Family("llama3_2.jinja", tuple(LLAMA3), "<|eot_id|>", "<|begin_of_text|>",
                       adds_bos=True),
    "gemma2": Family("gemma2.jinja", tuple(GEMMA), "<eos>", "<bos>", "<pad>", adds_bos=True),
    "gemma3": Family("gemma3.jinja", (*GEMMA, "<start_of_image>"), "<eos>", "<bos>", "<pad>",
                     adds_bos=True),
    "mistral_v3": Family("mistral_v3.jinja", tuple(MISTRAL_V3), "</s>", "<s>", unk="<unk>",
                         adds_bos=True),
    "mistral_v7_tekken": Family(
        "mistral_v7_tekken.jinja", (*MISTRAL_V3, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]"),
        "</s>", "<s>", unk="<unk>", adds_bos=True),
    "phi3_5": Family("phi3_5.jinja", ("<s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>",
                                      "<|end|>"), "<|endoftext|>", "<s>", "<|endoftext|>",
                     "<unk>"),
    "phi4": Family("phi4.jinja", tuple(PHI4), "<|im_end|>", "<|endoftext|>", "<|dummy_85|>"),
    "phi4_reasoning": Family("phi4_reasoning_generation.jinja", tuple(PHI4), "<|im_end|>",
                             "<|endoftext|>", "<|dummy_85|>"),
    "deepseek_v3": Family("deepseek_v3.jinja", tuple(DEEPSEEK), "<｜end▁of▁sentence｜>",
                          "<｜begin▁of▁sentence｜>", adds_bos=True),
    "deepseek_r1": Family("deepseek_r1.jinja", tuple(DEEPSEEK), "<｜end▁of▁sentence｜>",
                          "<｜begin▁of▁sentence｜>", adds_bos=True),
    "qwen2_5": Family("qwen2_5.jinja", (), "<|im_end|>", pad="<|endoftext|>"),
    "hermes2pro_tool_use": Family(
        "hermes2pro_tool_use.jinja", ("<|begin_of_text|>", "<tools>", "</tools>"),
        "<|im_end|>", "<|begin_of_text|>", adds_bos=True),
}


def write_all(out: Path, qwen3_dir: Path, templates: Path) -> None:
    """Every family from the Qwen3 tokenizer's own files, edited as JSON (loading and saving
    an 18 MB tokenizer per family through transformers would take seconds each)."""
    backend = json.loads((qwen3_dir / "tokenizer.json").read_text(encoding="utf-8"))
    config = json.loads((qwen3_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    for name, family in FAMILIES.items():
        _write_family(backend, config, family, (templates / family.template).read_text(),
                      out / name)


def _write_family(backend: dict, config: dict, family: Family, template: str,
                  out: Path) -> None:
    backend = {**backend, "added_tokens": list(backend["added_tokens"])}
    ids = {t["content"]: t["id"] for t in backend["added_tokens"]}
    vocab = backend["model"]["vocab"]
    next_id = max(ids.values()) + 1
    for token in family.special:
        if token in ids:
            continue
        # A token the BPE vocabulary already holds ("<s>" is an ordinary Qwen3 piece) keeps
        # its id, as tokenizers' add_special_tokens does; the others get new ids.
        ids[token] = vocab.get(token, next_id)
        next_id += token not in vocab
        backend["added_tokens"].append({
            "id": ids[token], "content": token, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True})
    backend["post_processor"] = None
    if family.adds_bos:
        bos = {"SpecialToken": {"id": family.bos, "type_id": 0}}
        backend["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, bos,
                     {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {family.bos: {"id": family.bos, "ids": [ids[family.bos]],
                                            "tokens": [family.bos]}}}
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text(json.dumps(backend, ensure_ascii=False),
                                        encoding="utf-8")
    (out / "chat_template.jinja").write_text(template)
    config = {**config, "tokenizer_class": "PreTrainedTokenizerFast",
              "add_bos_token": family.adds_bos, "bos_token": family.bos,
              "eos_token": family.eos, "pad_token": family.pad, "unk_token": family.unk,
              "extra_special_tokens": [t for t in family.special
                                       if t not in (family.bos, family.eos, family.pad,
                                                    family.unk)]}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                               encoding="utf-8")
