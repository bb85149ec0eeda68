"""Reference run for the masking family: labels built from `tokenizer.bos_token`, which is None.

The MiniMind-style `LoRADataset` and its fix `LoRADatasetFixed` (fixtures/pipelines/
minimind_dataset.py) feed the same short training loop: a tiny Qwen3 (the real 151,669-token
vocabulary, 2 layers, hidden 32, fp32) paired with the real Qwen3 tokenizer, LoRA adapters
(rank 8, alpha 16, A Kaiming-uniform, B zero) on every linear layer except the tied lm_head,
base frozen, plain AdamW, a fixed seed. Before training, loradoctor's engine checks each
dataset class with `check-dataset --dataset ...`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import InputError
from .runs import ReferenceRun, RunOutcome

STEPS = 6
BATCH = 4
LR = 1e-2
RANK, ALPHA = 8, 16
SEED = 0
DATA = "data/persona.jsonl"
PIPELINE = "pipelines/minimind_dataset.py"


def fixtures_dir() -> Path:
    """The repository's fixtures folder (not part of the installed package)."""
    path = Path(__file__).resolve().parents[2] / "fixtures"
    if not (path / DATA).is_file() or not (path / PIPELINE).is_file():
        raise InputError(f"reference run masking: needs the repository's fixtures folder "
                         f"({path}); run it from a source checkout of loradoctor")
    return path


def _lora(model, rank: int, alpha: int) -> list:
    """Wrap every nn.Linear except lm_head in a LoRA module; return the trainable parameters."""
    import torch
    from torch import nn

    class LoRALinear(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base = base
            self.A = nn.Parameter(torch.empty(rank, base.in_features))
            self.B = nn.Parameter(torch.zeros(base.out_features, rank))
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            self.scaling = alpha / rank

        def forward(self, x):
            return self.base(x) + (x @ self.A.T @ self.B.T) * self.scaling

    for p in model.parameters():
        p.requires_grad_(False)
    targets = [(parent, name) for parent in model.modules()
               for name, child in parent.named_children()
               if isinstance(child, nn.Linear) and name != "lm_head"]
    params = []
    for parent, name in targets:
        wrapped = LoRALinear(getattr(parent, name))
        setattr(parent, name, wrapped)
        params += [wrapped.A, wrapped.B]
    return params


def _batches(dataset, pad_id: int) -> list[dict]:
    """The dataset's items padded into batches: ids with pad_id, labels with -100."""
    import torch

    items = [dataset[i] for i in range(len(dataset))]
    out = []
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (x, y) in enumerate(chunk):
            ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = x, y, 1
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


def _train(base, tokenizer, dataset) -> list[float]:
    import copy

    import torch

    torch.manual_seed(SEED)
    model = copy.deepcopy(base).train()  # the same base weights for every pipeline
    params = _lora(model, RANK, ALPHA)
    opt = torch.optim.AdamW(params, lr=LR)
    batches = _batches(dataset, tokenizer.pad_token_id)
    losses = []
    for step in range(STEPS):
        loss = model(**batches[step % len(batches)]).loss  # the model shifts labels itself
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


def _flagged(data: Path, tokenizer_dir: Path, tokenizer, spec: str) -> list[str]:
    """Codes of the error and warning findings `check-dataset --dataset SPEC` reports."""
    from .. import engine, registry
    from ..context import DatasetContext
    from ..findings import Severity

    ctx = DatasetContext(data, tokenizer_dir, dataset_spec=spec)
    ctx.memo("tokenizer", lambda: tokenizer)  # loaded once for the whole run
    ctx.validate_inputs()
    report = engine.run("check-dataset", registry.rules_for("dataset"), ctx)
    return sorted({f.code for f in report.findings if f.severity is not Severity.INFO})


def run_masking() -> RunOutcome:
    """The MiniMind-style dataset masks every label with the real Qwen3 tokenizer: NaN loss.

    `LoRADataset` scans for `tokenizer(f"{tokenizer.bos_token}assistant\\n")`; Qwen3's
    bos_token is None, so the marker is "Noneassistant\\n", no label is kept and the mean
    cross-entropy over zero tokens is NaN at every step. `LoRADatasetFixed` scans for the
    template's real "<|im_start|>assistant\\n" and trains: the loss is finite and falls.
    loradoctor flags the buggy class (LD101 + LD102) and nothing on the fixed one, before any
    training step.
    """
    from ..assets import qwen3_tokenizer_dir, tiny_qwen3_dir
    from ..inputs.pretrained import load_model, load_tokenizer
    from ..inputs.specs import load_spec

    fx = fixtures_dir()
    data = fx / DATA
    tok_dir = qwen3_tokenizer_dir()
    tokenizer = load_tokenizer(tok_dir)
    base = load_model(tiny_qwen3_dir(), "fp32", "cpu")
    curves, flagged, supervised = {}, {}, {}
    for label, name in (("buggy LoRADataset", "LoRADataset"), ("fixed", "LoRADatasetFixed")):
        spec = f"{fx / PIPELINE}:{name}"
        flagged[label] = _flagged(data, tok_dir, tokenizer, spec)
        dataset = load_spec(spec)(tokenizer, str(data), 512)
        supervised[label] = sum(int((dataset[i][1] != -100).sum()) for i in range(len(dataset)))
        curves[label] = _train(base, tokenizer, dataset)
    buggy, fixed = curves["buggy LoRADataset"], curves["fixed"]
    buggy_nan = all(math.isnan(v) for v in buggy)
    fixed_ok = all(math.isfinite(v) for v in fixed) and fixed[-1] < fixed[0]
    flags_ok = {"LD101", "LD102"} <= set(flagged["buggy LoRADataset"]) and not flagged["fixed"]
    verdict = [
        f"buggy LoRADataset: {supervised['buggy LoRADataset']} supervised labels in "
        f"{len(data.read_text().splitlines())} samples; loss is nan at "
        f"{sum(map(math.isnan, buggy))} of {STEPS} steps",
        f"fixed: {supervised['fixed']} supervised labels; loss {fixed[0]:.3f} -> {fixed[-1]:.3f} "
        f"over {STEPS} AdamW steps (lr {LR}), finite at every step",
        f"trained: LoRA rank {RANK} on every linear layer of a tiny Qwen3 (2 layers, hidden 32, "
        f"151,669-token vocabulary), base frozen, fp32, batch {BATCH}",
        "loradoctor before training: buggy -> " + (", ".join(flagged["buggy LoRADataset"])
                                                   or "nothing")
        + "; fixed -> " + (", ".join(flagged["fixed"]) or "nothing"),
    ]
    return RunOutcome(curves=curves, flagged=flagged, verdict=verdict,
                      reproduced=buggy_nan and fixed_ok and flags_ok)


RUNS = [ReferenceRun(name="masking",
                     title="labels from a None bos_token (MiniMind LoRADataset, Qwen3 tokenizer)",
                     run=run_masking)]
