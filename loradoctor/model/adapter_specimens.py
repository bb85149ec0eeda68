"""Saved adapters built from the tiny Qwen3 for check-adapter's fixtures and reference run.

Each specimen is a real PEFT folder (or a file the user's own save function wrote), made the
way people make them: a real PEFT LoRA (r=8, alpha=16 on q/k/v/o and the MLP) trained a few
AdamW steps on the tiny Qwen3 and saved with `save_pretrained`, then broken one documented way:

- `trained`: saved as PEFT saves it (clean);
- `untrained`: saved before any training step (every lora_B is still zero);
- `ddp_prefix`: the state dict taken from a `DistributedDataParallel`-wrapped model
  (`module.` before every key), written as adapter_model.safetensors;
- `compiled`: the same from a `torch.compile`d model (`_orig_mod.` before every key);
- `inner_model`: keys taken from the inner model (`base_model.model.` missing);
- `nan`: one lora_B holds NaN (a diverged step saved anyway);
- `rank_mismatch`: adapter_config.json says r=16, the tensors are rank 8 (config edited, or
  written for another run).

Built once into the loradoctor cache (`assets.cache_dir()`), never into the repository.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SPECIMENS_VERSION = "1"
STEPS = 6
LR = 1e-3
BATCH = (2, 32)  # (batch, tokens) of the training batch
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NAMES = ("trained", "untrained", "ddp_prefix", "compiled", "inner_model", "nan", "rank_mismatch")


def root() -> Path:
    from .. import assets
    return assets.cache_dir() / f"adapters-v{SPECIMENS_VERSION}"


def batch(model, seed: int = 0) -> dict:
    """A fixed batch of random token ids (every position supervised)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, BATCH, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def peft_model(model_dir: Path):
    """The tiny Qwen3 with a fresh PEFT LoRA (seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ..inputs.pretrained import load_model
    torch.manual_seed(0)
    base = load_model(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0,
                        task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def train_steps(model, steps: int = STEPS) -> list[float]:
    from .training import train
    run = train(model, batch(model), steps, lr=LR)
    if run.error:
        raise RuntimeError(run.error)
    model.eval()
    return run.losses


def rewrite(src: Path, dst: Path, keys=None, tensors=None, config=None) -> Path:
    """Copy a PEFT folder, renaming its keys (`keys(k) -> k'`), changing tensors or config."""
    from safetensors.torch import load_file, save_file
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    state = load_file(str(src / "adapter_model.safetensors"))
    if tensors is not None:
        state = tensors(state)
    if keys is not None:
        state = {keys(k): v for k, v in state.items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst / "adapter_model.safetensors"))
    if config is not None:
        cfg = json.loads((src / "adapter_config.json").read_text())
        (dst / "adapter_config.json").write_text(json.dumps(config(cfg), indent=2))
    return dst


def _with_nan(state: dict) -> dict:
    import torch
    key = sorted(k for k in state if ".lora_B." in k)[0]
    t = state[key].clone()
    t[0, 0] = torch.nan
    return {**state, key: t}


def build(out: Path, model_dir: Path) -> None:
    """Write every specimen folder under `out`."""
    from .safety import rng_preserved
    with rng_preserved(0):
        untrained = peft_model(model_dir)
        untrained.save_pretrained(str(out / "untrained"))
        del untrained
        model = peft_model(model_dir)
        losses = train_steps(model)
        model.save_pretrained(str(out / "trained"))
    trained = out / "trained"
    rewrite(trained, out / "ddp_prefix", keys=lambda k: "module." + k)
    rewrite(trained, out / "compiled", keys=lambda k: "_orig_mod." + k)
    rewrite(trained, out / "inner_model", keys=lambda k: k.removeprefix("base_model.model."))
    rewrite(trained, out / "nan", tensors=_with_nan)
    rewrite(trained, out / "rank_mismatch", config=lambda c: {**c, "r": 16})
    (out / "losses.json").write_text(json.dumps(losses))


def specimens(model_dir: Path | None = None) -> dict[str, Path]:
    """name -> folder, built on first use into the cache."""
    from .. import assets
    model_dir = model_dir or assets.tiny_qwen3_dir()
    folder = assets.build_atomically(root(), lambda out: build(out, model_dir))
    return {name: folder / name for name in NAMES}
