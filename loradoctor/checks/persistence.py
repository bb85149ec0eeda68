"""LD5xx: adapter persistence. Saving the adapters and loading them into a fresh copy, and
merging `W + scaling * B @ A` into the base weights, must both give the model you trained.

The rules read `model/round_trip.persistence`: the adapters' B (and a zero A) set to random
values so no check is trivial, logits and the adapter state taken from your model as you built
it, then a fresh copy rebuilt from the model directory by your own apply code (or PEFT). On a
quantized base (QLoRA) the merge goes into the dequantized weights, and LD502 also says what
requantizing it, as `merge_and_unload()` on the quantized model does, costs.
"""

from __future__ import annotations

from pathlib import Path

from ..findings import Severity
from ..rules import Outcome, SkipCheck, rule
from ..text import capped

# LD502 on a quantized base: the requantized merge is not the trained model when its error is
# larger than the adapter's own effect, or when it keeps less than this share of that effect.
KEPT_AT_LEAST = 0.5


def _skip_if_broken(ps) -> None:
    if ps.error:
        raise SkipCheck(f"the adapted model's forward raises {ps.error} (see LD201/LD401)")


@rule("LD501", "adapter-round-trip-mismatch", command="model", severity=Severity.ERROR,
      runs_offloaded=False)
def adapter_round_trip_mismatch(ctx) -> Outcome:
    """Saving the adapters and loading them into a fresh copy does not give the same model.

    ## What it does
    Sets every adapter's B to random values (and A, if zero), takes the logits of your model
    on the probe batch, and saves the adapter tensors of its `state_dict` as safetensors.
    Then loads the base model again from disk, applies your own LoRA code (or PEFT) to it,
    loads the saved tensors by name and compares: every adapter must be restored and the
    logits must match. When your apply module also defines `save_lora`/`load_lora` (or
    `save_adapter`/`load_adapter`), that pair gets the same round trip. An adapter counts as
    restored when its loaded factors are far closer to the saved values than to the fresh
    copy's own start: a pair that saves in fp16 restores every adapter, rounded, and is
    reported as information with the logit difference it causes; an adapter left at its fresh
    start is lost, an error. Calls to `torch.load` in your module that pass
    `weights_only=False`, or omit it on a torch older than 2.6, are warned as unsafe.

    ## Why is this bad?
    An adapter that is not in the `state_dict` (kept in a Python list or only in a closure),
    a save filter that misses some keys (`".lora." in k` against `lora_A` names), or names that
    differ between the training and the loading model all produce a checkpoint that loads
    without an error and silently serves the untrained initialisation. Unpickling a `.pth`
    with `weights_only=False` (the default before torch 2.6) runs arbitrary code from the
    file.

    ## Example
    ```python
    state = {k: v for k, v in model.state_dict().items() if ".lora." in k}   # misses lora_A
    torch.save(state, path); model.load_state_dict(torch.load(path), strict=False)
    ```

    ## Use instead
    ```python
    from safetensors.torch import save_file, load_file
    state = {k: v for k, v in model.state_dict().items() if "lora" in k}
    save_file(state, path)
    missing = set(state) - set(load_file(path)); assert not missing
    ```
    """
    from ..model.round_trip import persistence
    from ..model.shared import adapters_or_skip
    adapters = adapters_or_skip(ctx)
    findings = _unsafe_loads(ctx)
    ps = persistence(ctx)
    _skip_if_broken(ps)
    if ps.fresh_error:
        findings.append(adapter_round_trip_mismatch.finding(
            f"a fresh copy could not be built to load the adapters into: applying your code to "
            f"the model loaded again from {ctx.model_name} raised {ps.fresh_error}",
            severity=Severity.WARNING, evidence={"error": ps.fresh_error},
            fix="make the apply function work on any freshly loaded model (no global state)"))
        return Outcome(findings, summary="round trip not measured: no fresh copy")
    limit = ps.rtol * max(1.0, ps.logits_max_abs)
    if ps.unregistered:
        findings.append(adapter_round_trip_mismatch.finding(
            f"{len(ps.unregistered)} of {len(adapters)} adapters are not in the model's "
            f"state_dict ({capped(ps.unregistered)}): saving the state_dict drops them",
            location=ps.unregistered[0], evidence={"modules": ps.unregistered},
            fix="register the adapters as submodules (module.lora = lora, nn.ModuleList)"))
    missing = [n for n in ps.not_restored if n not in ps.unregistered]
    if missing:
        findings.append(adapter_round_trip_mismatch.finding(
            f"{len(missing)} of {len(adapters)} adapters are not restored by loading the saved "
            f"state into a fresh copy ({capped(missing)})", location=missing[0],
            evidence={"modules": missing, "unexpected_keys": ps.unexpected_keys[:20]},
            fix="save and load every adapter tensor under the same names"))
    if ps.roundtrip_diff is not None and ps.roundtrip_diff > limit:
        findings.append(adapter_round_trip_mismatch.finding(
            f"the fresh copy with the saved adapters loaded gives logits up to "
            f"{ps.roundtrip_diff:.4g} away from yours (tolerance {limit:.1e})",
            evidence={"max_abs_diff": ps.roundtrip_diff, "tolerance": limit},
            fix="every tensor the adapted forward uses must be in the saved state"))
    ur = ps.user_roundtrip
    if ur is not None:
        findings += _user_pair(ur, len(adapters), limit)
    diff = ps.roundtrip_diff
    summary = (f"{ps.saved_keys} adapter tensors saved as safetensors; fresh copy restores "
               f"{len(adapters) - len(ps.not_restored)} of {len(adapters)} adapters, logits "
               f"max |diff| {diff:.2g}" if diff is not None else "round trip not measured")
    if ur is not None and not ur.get("error"):
        summary += f"; {ur['save']}/{ur['load']} max |diff| {ur.get('diff', float('nan')):.2g}"
        if ur.get("rounded") and not ur.get("not_restored"):
            summary += f" (rounded {ur.get('rounded_as') or 'to a lower precision'})"
    return Outcome(findings, summary=summary)


@rule("LD502", "merge-not-equivalent", command="model", severity=Severity.ERROR,
      runs_offloaded=False)
def merge_not_equivalent(ctx) -> Outcome:
    """Merging `W + scaling * B @ A` into the base weights does not reproduce the adapted model.

    ## What it does
    With B set to random values (so the check is not trivial), compares the logits of your
    adapted model with those of a fresh copy whose base weights were merged as
    `W + scaling * B @ A` (the scaling your modules declare, else the one measured) and whose
    adapters were then zeroed. Names the layers whose adapter output is not `scaling * B @ A @ x`.

    On a quantized base (bitsandbytes 4-bit or 8-bit: QLoRA) W is the dequantized weight, the
    tolerance is the compute dtype's (bf16 in QLoRA), and each merged weight is then quantized
    again with its layer's own settings, which is what PEFT's `merge_and_unload()` on the
    quantized model stores (with `||scaling * B @ A||` 5% of `||W||`, more than most trained
    adapters change). The root mean square of the logits' change it causes is reported beside
    the adapter's own effect (exact merge against unmerged), with the share of the effect the
    requantized model keeps; information when the error is larger than the effect or less than
    half of the effect survives: before training nothing is merged yet, and the way you merge
    decides whether it happens.

    ## Why is this bad?
    Deployment merges the adapters into the base weights; every export tool assumes the
    adapter is exactly the linear map `scaling * B @ A`. A bias in A or B, a nonlinearity
    between them, a dropout left active or a scaling applied twice all train a model that the
    merge cannot reproduce, so the model you ship is not the one you evaluated. Merging into a
    4-bit base does the same quietly: a LoRA adapter changes each weight by a few percent, less
    than a step of the NF4 grid (NF4 stores the weights about 9% off), so requantizing
    `W + scaling * B @ A` rounds most of the change back onto the grid and the merged 4-bit
    model is about as far from the trained one as the untrained base is.

    ## Example
    ```python
    self.A = nn.Linear(in_features, rank)          # bias=True by default: B @ (A x + a)
    merged = PeftModel.from_pretrained(base_4bit, adapter_dir).merge_and_unload()  # requantized
    ```

    ## Use instead
    ```python
    self.A = nn.Linear(in_features, rank, bias=False)
    self.B = nn.Linear(rank, out_features, bias=False)
    base = base_4bit.dequantize(dtype=torch.bfloat16)  # the weights the adapter trained on
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    ```
    """
    from ..model.layer_probe import module_probe
    from ..model.round_trip import persistence
    from ..model.shared import adapters_or_skip
    adapters_or_skip(ctx, linear_only=True)
    ps = persistence(ctx)
    _skip_if_broken(ps)
    if ps.fresh_error:
        raise SkipCheck(f"no fresh copy to merge into: {ps.fresh_error} (see LD501)")
    if ps.merge_unmeasured:
        raise SkipCheck(ps.merge_unmeasured)
    if ps.merge_error:
        return Outcome([merge_not_equivalent.finding(
            f"merging W + scaling * B @ A into the base weights failed: {ps.merge_error}",
            evidence={"error": ps.merge_error}, severity=Severity.WARNING)],
            summary="merge not measured")
    limit = ps.merge_rtol * max(1.0, ps.logits_max_abs)
    diff = ps.merge_diff
    source = ps.merge_scaling_source
    into = "the dequantized base weights" if ps.requantization is not None else "the base weights"
    requantized, notes = _requantized_merge(ps)
    if diff is not None and diff > limit:
        odd = [v for v in module_probe(ctx).verdicts if v.status in ("unexplained", "no-delta")]
        where = ""
        if odd:
            v = odd[0]
            where = (f"; {v.adapter.name}'s output is not F.linear + s * B @ A @ x "
                     f"(relative residual {v.residual:.2g}): a bias in A or B, or something "
                     f"between them" if v.status == "unexplained" else
                     f"; {v.adapter.name} never adds its adapter (LD204)")
        return Outcome([merge_not_equivalent.finding(
            f"merging W + scaling * B @ A ({source} scaling) into {into} gives logits "
            f"up to {diff:.4g} away from the unmerged model (tolerance {limit:.1e}){where}",
            location=odd[0].adapter.name if odd else None,
            evidence={"max_abs_diff": diff, "tolerance": limit, "scaling_source": source,
                      "modules": [v.adapter.name for v in odd[:50]]},
            fix="make the adapter exactly scaling * B(A(x)): bias=False in A and B, nothing "
                "between them, scaling applied once"), *notes],
            summary=f"merged vs unmerged logits max |diff| {diff:.4g} > {limit:.1e}{requantized}")
    into = " into the dequantized base" if ps.requantization is not None else ""
    return Outcome(notes, summary=f"merged W + scaling * B @ A ({source} scaling){into} matches "
                                  f"the unmerged model (logits max |diff| {diff:.2g} <= "
                                  f"{limit:.1e}){requantized}")


def _requantized_merge(ps) -> tuple[str, list]:
    """On a quantized base, the merge requantized as `merge_and_unload()` stores it: its figures
    for LD502's summary, and an information finding when it is not the trained model (its
    error larger than the adapter's own effect, or less than half of the effect kept)."""
    from ..model.round_trip import PERTURB_RELATIVE
    rq = ps.requantization
    if rq is None:
        return "", []
    kind = rq.quantization["kind"].replace("bit", "-bit") + (
        f" {rq.quantization['quant_type'].upper()}" if "quant_type" in rq.quantization else "")
    moves = (f"the logits move by {rq.requantization_error:.3g} (rms), {rq.ratio:.2f}x the "
             f"adapter's own effect ({rq.adapter_effect:.3g})")
    kept = f"{100 * max(rq.kept, 0.0):.0f}%"
    summary = f"; requantized into the {kind} base, {moves}, keeping {kept} of it"
    if rq.ratio <= 1 and rq.kept >= KEPT_AT_LEAST:
        return summary, []
    return summary, [merge_not_equivalent.finding(
        f"merge_and_unload() on the {kind} model requantizes the merged weights: {moves}, and "
        f"{kept} of the effect survives: the merged model is not the one you trained",
        severity=Severity.INFO,
        evidence={**rq.to_dict(), "adapter_relative_size": PERTURB_RELATIVE},
        fix="merge into the dequantized base (base.dequantize(dtype=torch.bfloat16), then "
            "merge_and_unload()), or serve the quantized base with the adapter unmerged")]


def _unsafe_loads(ctx) -> list:
    """LD501 on the `torch.load` calls in the user's apply module that may unpickle anything:
    warnings, or an info where torch's own default (2.6 and later) makes them safe."""
    from ..model.torch_load import torch_version, unsafe_torch_loads, weights_only_by_default
    findings = []
    safe_default = weights_only_by_default()
    for hit in unsafe_torch_loads(ctx):
        where = f"{hit['file']}:{hit['line']}"
        call = f"{Path(hit['file']).name}:{hit['line']} loads with " \
               f"{hit['code'] or 'torch.load(...)'}"
        evidence = {**hit, "torch": torch_version(), "weights_only_default": safe_default}
        if hit["explicit_false"] or not safe_default:
            findings.append(adapter_round_trip_mismatch.finding(
                f"{call} " + ("and weights_only=False: unpickling the checkpoint can run "
                              "arbitrary code" if hit["explicit_false"] else
                              f"without weights_only=True on torch {torch_version()}, whose "
                              f"default still unpickles anything: loading a checkpoint can run "
                              f"arbitrary code"),
                location=where, severity=Severity.WARNING, evidence=evidence,
                fix="save adapters with safetensors, or pass weights_only=True"))
        else:
            findings.append(adapter_round_trip_mismatch.finding(
                f"{call} without weights_only: safe on torch {torch_version()} (weights_only=True "
                f"is the default since torch 2.6), unsafe wherever the code runs on an older torch",
                location=where, severity=Severity.INFO, evidence=evidence,
                fix="pass weights_only=True to keep it safe on every torch version"))
    return findings


def _user_pair(ur: dict, n_adapters: int, limit: float) -> list:
    """LD501 on the round trip of the user's own save/load pair: it fails, loses adapters,
    rounds them, or restores every tensor and still not the logits."""
    findings = []
    pair = f"{ur['save']}/{ur['load']}"
    if ur.get("error"):
        findings.append(adapter_round_trip_mismatch.finding(
            f"your {pair} round trip fails: {ur['error']}", severity=Severity.WARNING,
            evidence=ur, fix=f"make {pair} save and load the adapters of this model"))
    elif ur.get("not_restored"):
        # A lost adapter serves its untrained start after loading: the trained run is gone.
        lost = ur["not_restored"]
        findings.append(adapter_round_trip_mismatch.finding(
            f"your {pair} (beside the apply function) restores {n_adapters - len(lost)} of "
            f"{n_adapters} adapters into a fresh copy (logits up to {ur['diff']:.4g} away): "
            f"a checkpoint saved with it loses {capped(lost)}",
            location=lost[0], evidence={**ur, "tolerance": limit},
            fix=f"make {ur['save']} keep every adapter tensor (filter on the real parameter "
                f"names)"))
    elif ur.get("rounded"):
        # Every adapter is back, at the precision it was saved in: a choice, not a loss.
        precision = f"as {ur['rounded_as']}" if ur.get("rounded_as") else \
            "in a lower precision"
        findings.append(adapter_round_trip_mismatch.finding(
            f"your {pair} restores all {n_adapters} adapters into a fresh copy, with "
            f"{len(ur['rounded'])} of them rounded: it stores their tensors {precision} "
            f"(relative error up to {ur['max_rel_error']:.2g}); logits up to "
            f"{ur['diff']:.4g} away from the model you saved", severity=Severity.INFO,
            location=ur["rounded"][0], evidence={**ur, "tolerance": limit},
            fix=f"keep the adapters in their training dtype in {ur['save']} if you resume "
                f"training from the checkpoint; for inference the rounding is harmless"))
    elif ur.get("diff", 0) > limit:
        findings.append(adapter_round_trip_mismatch.finding(
            f"your {pair} restores every adapter tensor exactly, yet the fresh copy's logits "
            f"are up to {ur['diff']:.4g} away from yours (tolerance {limit:.1e}): a "
            f"checkpoint saved with it loses part of the adapter state",
            severity=Severity.WARNING, evidence={**ur, "tolerance": limit},
            fix=f"make {ur['save']} save every tensor the adapted forward uses"))
    return findings


RULES = [adapter_round_trip_mismatch, merge_not_equivalent]
