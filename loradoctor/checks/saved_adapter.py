"""LD51x: the saved adapter (`check-adapter`). Whether its keys reach the base model's modules,
whether its factors hold a trained update, whether it agrees with its adapter_config.json, how
large each layer's update is, and what it does to the base model's logits, loaded the way it
will be loaded and merged.

Every rule reads the measurements of `model/saved_adapter/` (the file, read without executing
anything; the base model's logits; the adapter loaded by PEFT or by the user's own load
function; the merge), computed once per run.
"""

from __future__ import annotations

import math

from ..findings import Severity, Table
from ..rules import Outcome, SkipCheck, rule
from ..text import capped

# torch and the measurements are imported inside the checks: importing the registry (for
# `loradoctor rules`, check-dataset) must stay light.

UPDATE_TOO_LARGE = 1.0      # ||s * B @ A|| / ||W|| at or above this: the update outweighs W
UPDATE_OUTLIER_FACTOR = 20.0  # a layer's relative update this many times the median (or 1/x)
TABLE_ROWS = 5              # largest and smallest layers in the update table


def _loader(art) -> str:
    return "PEFT" if art.kind == "peft" else f"your {art.load_fn.__name__}"


def _served(eff) -> str:
    return f"logits max |diff| {eff.served_diff:.2g} from the base" \
        if eff.served_diff is not None else "the load failed"


@rule("LD510", "adapter-keys-match-no-module", command="adapter", severity=Severity.ERROR)
def adapter_keys_match_no_module(ctx) -> Outcome:
    """Keys of the saved adapter match no module of the base model, so loading it loads nothing.

    ## What it does
    Compares the saved keys with the keys the loading code expects (PEFT's own, from the
    adapter config on this base; or, with `--apply`, your adapted model's) and explains each
    key that matches nothing: a `module.` prefix (the state dict of a DDP / DataParallel
    wrapper), `_orig_mod.` (a `torch.compile`d model), a `base_model.model.` prefix too many or
    too few, or layer names the base does not have (with the nearest real one). Then loads
    the folder as it will be loaded and reports how far the served logits are from the base's.

    ## Why is this bad?
    An error, because the artifact is the run's result and it is lost: PEFT loads a folder
    whose keys do not match with only a Python warning ("Found missing adapter keys") and
    serves the base model; `load_state_dict(strict=False)` ignores every key it does not
    know. The training was done, the file was shipped, and what runs is the untrained base.

    ## Example
    ```python
    model = DDP(get_peft_model(base, config))
    save_file(get_peft_model_state_dict(model), "out/adapter_model.safetensors")  # module.*
    ```

    ## Use instead
    ```python
    model.module.save_pretrained("out")   # the unwrapped model (or strip "module." first)
    ```
    """
    from ..model.saved_adapter.effect import effect, keys
    from ..model.saved_adapter.files import artifact
    from ..model.saved_adapter.key_match import key_fix
    art, eff = artifact(ctx), effect(ctx)
    km = keys(ctx)
    findings = []
    for p in km.patterns:
        n = len(p.keys)
        example = p.keys[0]
        if p.kind == "renamed":
            near = p.closest.get(example)
            text = (f"{n} of {km.saved} saved keys name layers the base model does not have "
                    f"(e.g. {example!r}" + (f"; nearest real key {near!r}" if near else "") + ")")
        else:
            target = km.fixed.get(example)
            what = {"wrapper-prefix": f"carry the prefix {p.prefix!r} of {p.cause}",
                    "prefix-too-many": f"carry a prefix too many ({p.prefix!r}): {p.cause}",
                    "prefix-too-few": f"lack the prefix {p.prefix!r}: {p.cause}"}[p.kind]
            text = f"{n} of {km.saved} saved keys {what} (e.g. {example!r} for {target!r})"
        text += (f": {_loader(art)} loads {eff.restored if eff.restored is not None else 0} of "
                 f"{eff.adapters} adapters from the file and serves ")
        text += "the base model" if eff.served_diff is not None and \
            eff.served_diff <= eff.identity_rtol * max(1.0, eff.base_max_abs) else "what is left"
        text += f" ({_served(eff)})"
        if eff.intended_diff is not None and p.kind != "renamed":
            text += (f"; loaded with the keys put right, the adapter moves the logits by up to "
                     f"{eff.intended_diff:.3g}")
        if eff.load_warnings:
            text += f". {_loader(art)} only warned: {eff.load_warnings[0].split(':')[0]!r}"
        findings.append(adapter_keys_match_no_module.finding(
            text, location=str(art.file),
            evidence={"pattern": p.kind, "prefix": p.prefix, "keys": len(p.keys),
                      "saved_keys": km.saved, "examples": p.keys[:5],
                      "nearest": dict(list(p.closest.items())[:5]),
                      "served_max_abs_diff": eff.served_diff,
                      "intended_max_abs_diff": eff.intended_diff,
                      "adapters_loaded": eff.restored, "adapters": eff.adapters},
            fix=key_fix(p)))
    summary = (f"{km.unmatched} of {km.saved} saved keys match no module of the base"
               if findings else f"each of {km.saved} saved keys matches what {_loader(art)} "
                                f"expects on this base")
    return Outcome(findings, summary=summary)


@rule("LD511", "adapter-factor-all-zero", command="adapter", severity=Severity.ERROR)
def adapter_factor_all_zero(ctx) -> Outcome:
    """A saved adapter's B (or A) is all zero: the file holds no trained update.

    ## What it does
    Reads every adapted layer's factors from the file and reports those whose `lora_B` or
    `lora_A` is exactly zero, naming the layers; when every B is zero the file is the
    untrained initialisation.

    ## Why is this bad?
    An error: the update `scaling * B @ A` of such a layer is exactly zero, so loading the
    adapter changes nothing there. B is zero at initialisation; a file whose B is still zero
    was saved before training (a checkpoint callback at step 0, `save_pretrained` called on
    the wrong object) or comes from a run in which no gradient reached the adapters. A zero A
    (a later init that zeroed every Linear) does the same.

    ## Example
    ```python
    model = get_peft_model(base, config)
    model.save_pretrained("out")        # saved before trainer.train()
    trainer.train()
    ```

    ## Use instead
    ```python
    trainer.train()
    model.save_pretrained("out")
    ```
    """
    from ..model.saved_adapter.factors import saved_pairs
    from ..model.saved_adapter.files import artifact
    art = artifact(ctx)
    pairs = [p for p in saved_pairs(art.tensors) if p.A is not None and p.B is not None]
    if not pairs:
        raise SkipCheck("no lora_A / lora_B pair found in the file")
    b_zero = [p.module for p in pairs if _all_zero(p.B)]
    a_zero = [p.module for p in pairs if _all_zero(p.A)]
    findings = []
    n = len(pairs)
    if b_zero:
        whole = len(b_zero) == n
        findings.append(adapter_factor_all_zero.finding(
            f"lora_B is all zero in {len(b_zero)} of {n} adapted layers ({capped(b_zero)})"
            + (": the file is the untrained initialisation (saved before training, or no "
               "gradient ever reached the adapters)" if whole else
               ": those layers add nothing (never trained)"),
            location=b_zero[0], evidence={"modules": b_zero, "adapters": n},
            fix="save after training; if it was saved after training, check that gradients "
                "reach the adapters (check-model --train-steps N)"))
    if a_zero:
        findings.append(adapter_factor_all_zero.finding(
            f"lora_A is all zero in {len(a_zero)} of {n} adapted layers ({capped(a_zero)}): "
            f"B @ A is zero there whatever B holds", location=a_zero[0],
            evidence={"modules": a_zero, "adapters": n},
            fix="do not re-initialise the model after attaching the adapters (an init that "
                "zeroes every Linear zeroes lora_A)"))
    summary = (f"{len(set(b_zero) | set(a_zero))} of {n} adapted layers hold a zero factor"
               if findings else f"lora_A and lora_B are non-zero in each of {n} adapted layers")
    return Outcome(findings, summary=summary)


def _all_zero(t) -> bool:
    return t.numel() == 0 or not bool((t != 0).any())


@rule("LD512", "adapter-tensor-not-finite", command="adapter", severity=Severity.ERROR)
def adapter_tensor_not_finite(ctx) -> Outcome:
    """A tensor of the saved adapter holds NaN or inf.

    ## What it does
    Counts the NaN and inf values in every tensor of the file and names the tensors.

    ## Why is this bad?
    An error: one NaN in a `lora_B` makes that layer's output NaN for every token, and the
    model's logits with it. It is what a diverged step (fp16 overflow, a learning rate spike)
    leaves behind when the checkpoint is written anyway: the run's last save is garbage.

    ## Example
    ```python
    trainer.train()            # loss: nan from step 812, logged as 0.0
    model.save_pretrained("out")
    ```

    ## Use instead
    ```python
    # save the last finite checkpoint; find the cause of the NaN (LD3xx, check-model)
    ```
    """
    import torch

    from ..model.saved_adapter.factors import canonical_module
    from ..model.saved_adapter.files import artifact
    art = artifact(ctx)
    bad = []
    for key, t in art.tensors.items():
        if not torch.is_floating_point(t):
            continue
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        if n_nan or n_inf:
            bad.append((key, n_nan, n_inf, t.numel()))
    if not bad:
        return Outcome(summary=f"each of {len(art.tensors)} tensors is finite")
    key, n_nan, n_inf, numel = bad[0]
    parts = [f"{n_nan:,} NaN" if n_nan else "", f"{n_inf:,} inf" if n_inf else ""]
    finding = adapter_tensor_not_finite.finding(
        f"{len(bad)} of {len(art.tensors)} tensors hold NaN or inf ({capped([b[0] for b in bad])});"
        f" {key} holds {' and '.join(p for p in parts if p)} of {numel:,} values",
        location=canonical_module(key.rsplit(".lora_", 1)[0]),
        evidence={"tensors": {k: {"nan": a, "inf": b, "values": c} for k, a, b, c in bad[:50]}},
        fix="save the last checkpoint whose tensors are finite, and find what diverged")
    return Outcome([finding], summary=f"{len(bad)} of {len(art.tensors)} tensors are not finite")


@rule("LD513", "adapter-disagrees-with-config", command="adapter", severity=Severity.ERROR)
def adapter_disagrees_with_config(ctx) -> Outcome:
    """The saved tensors disagree with adapter_config.json or with the base model.

    ## What it does
    Checks each saved pair against `adapter_config.json` and the base model: the rank of
    `lora_A` / `lora_B` against `r` (or its `rank_pattern`), their shapes against the base
    layer's, their dtypes, `lora_alpha` (zero scales the update to nothing), DoRA magnitude
    vectors against `use_dora`; every `target_modules` entry, `modules_to_save` entry and
    `layers_to_transform` index of the config against the base's modules (as LD205 does); and
    the layers the config adapts that the file holds no tensor for.

    ## Why is this bad?
    An error, because the adapter cannot be served as trained: PEFT refuses a rank or shape
    mismatch with a size error, silently skips a config target the base lacks, and leaves a
    layer without saved tensors at its initialisation. A config rewritten by hand, a folder
    assembled from two runs, or an adapter meant for another base all end here. Mixed
    dtypes between A and B are a warning (PEFT casts them on load).

    ## Example
    ```json
    {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}   // tensors: rank 8
    ```

    ## Use instead
    ```python
    model.save_pretrained("out")   # writes the config and the tensors of the same adapter
    ```
    """
    from ..model.saved_adapter.config_check import config_problems
    from ..model.saved_adapter.effect import effect, keys
    from ..model.saved_adapter.files import artifact
    from ..model.peft_targets import check_configs
    art, eff = artifact(ctx), effect(ctx)
    findings = []
    problems = config_problems(art, eff)
    by_kind: dict[str, list] = {}
    for p in problems:
        by_kind.setdefault(p.kind, []).append(p)
    for kind, group in by_kind.items():
        first = group[0]
        more = f" (and {len(group) - 1} more layers alike)" if len(group) > 1 else ""
        findings.append(adapter_disagrees_with_config.finding(
            first.message + more, location=first.location,
            severity=Severity(first.severity),
            evidence={**first.evidence, "kind": kind,
                      "modules": [p.location for p in group if p.location][:50]},
            fix={"rank": "save the config with the adapter it belongs to (model.save_pretrained)",
                 "shape": "load the adapter on the base model it was trained on",
                 "dtype": "save the factors as floating point tensors",
                 "mixed-dtype": "save both factors in one floating point dtype",
                 "alpha": "set lora_alpha to the value the adapter was trained with",
                 "dora": "save the config with the adapter it belongs to"}.get(kind)))
    if art.kind == "peft" and art.config:
        targets = check_configs({"default": art.config}, eff.target_names, "adapter_config.json")
        for u in targets.unmatched:
            entry = repr(u.entry) if isinstance(u.entry, str) else str(u.entry)
            near = f"; closest real names: {', '.join(u.closest)}" if u.closest else ""
            findings.append(adapter_disagrees_with_config.finding(
                f"adapter_config.json's {u.field} entry {entry} matches no module of the base "
                f"model{near}", location=f"adapter_config.json:{u.field}",
                evidence={"field": u.field, "entry": u.entry, "closest": u.closest},
                fix="load the adapter on the base it was trained on, or fix the config entry"))
        km = keys(ctx)
        lost = sorted({k.split(".lora_")[0] for k in km.missing if ".lora_" in k})
        if lost and km.saved:
            findings.append(adapter_disagrees_with_config.finding(
                f"the config adapts {len(lost)} layers the file holds no tensors for "
                f"({capped([m.removeprefix('base_model.model.') for m in lost])}): they load "
                f"at their initialisation (B zero)", location=lost[0].removeprefix(
                    "base_model.model."),
                evidence={"modules": lost[:50], "missing_keys": km.missing[:50]},
                fix="save every adapted layer (model.save_pretrained saves them all), or drop "
                    "the extra targets from the config"))
    n = len(_pairs(art))
    if findings:
        summary = f"{len(findings)} finding{'s' if len(findings) > 1 else ''}: the file " + \
            ("disagrees with its config or the base" if art.kind == "peft" else
             "disagrees with the base")
    elif art.kind == "peft":
        summary = f"{n} saved layers agree with the config and the base (rank, shapes, dtype, " \
                  f"targets)"
    else:
        summary = f"{n} saved layers agree with the base (shapes, dtype)"
    return Outcome(findings, summary=summary)


def _pairs(art):
    from ..model.saved_adapter.factors import saved_pairs
    return [p for p in saved_pairs(art.tensors) if p.A is not None and p.B is not None]


@rule("LD514", "adapter-update-outlier", command="adapter", severity=Severity.WARNING)
def adapter_update_outlier(ctx) -> Outcome:
    """A layer's update `scaling * B @ A` is far larger (or smaller) than the others, or than W.

    ## What it does
    For every adapted layer, computes the relative size of its update,
    `||scaling * B @ A|| / ||W||` (Frobenius norms; the scaling PEFT applies, `lora_alpha / r`
    or `/ sqrt(r)` with rsLoRA), shows the largest and the smallest in a table, and warns about
    layers whose update is at least as large as the weight itself, or more than 20 times away
    from the median layer.

    ## Why is this bad?
    A warning, because it may be what the data asked for, but an update that outweighs the
    pretrained weight, or one layer that moved far more than its neighbours, is the trace of
    a learning rate too high for that layer, a scaling applied twice, or a layer trained much
    longer than the rest; a layer that barely moved may have had no gradient. The table makes
    the shape of the training visible before the adapter is served.

    ## Example
    ```
    model.layers.11.mlp.down_proj   r=8  scaling 64  relative update 3.2   (median 0.004)
    ```

    ## Use instead
    ```python
    LoraConfig(r=8, lora_alpha=16)   # scaling 2; lower the learning rate if one layer runs away
    ```
    """
    from ..model.saved_adapter.effect import effect
    eff = effect(ctx)
    ups = [u for u in eff.updates if math.isfinite(u.relative)]
    if not ups:
        raise SkipCheck("no adapted linear layer to measure (see LD510 / LD513)")
    ordered = sorted(ups, key=lambda u: -u.relative)
    values = sorted(u.relative for u in ups)
    median = values[len(values) // 2] if len(values) % 2 else \
        (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    rows = [[u.module, u.rank, f"{u.scaling:g}", f"{u.relative:.3g}"] for u in
            ordered[:TABLE_ROWS]]
    if len(ordered) > TABLE_ROWS:
        tail = ordered[max(TABLE_ROWS, len(ordered) - TABLE_ROWS):]
        if len(ordered) > 2 * TABLE_ROWS:
            rows.append([f"... {len(ordered) - 2 * TABLE_ROWS} more", "", "", ""])
        rows += [[u.module, u.rank, f"{u.scaling:g}", f"{u.relative:.3g}"] for u in tail]
    table = Table(f"relative update ||scaling * B @ A|| / ||W|| per adapted layer (median "
                  f"{median:.3g}): the largest and the smallest", ["layer", "r", "scaling",
                                                                    "relative update"], rows)
    findings = []
    large = [u for u in ordered if u.relative >= UPDATE_TOO_LARGE]
    if large:
        findings.append(adapter_update_outlier.finding(
            f"the update outweighs the pretrained weight in {len(large)} of {len(ups)} layers: "
            f"{large[0].module} has ||scaling * B @ A|| = {large[0].relative:.3g} x ||W|| "
            f"(r={large[0].rank}, scaling {large[0].scaling:g}; median layer {median:.3g})",
            location=large[0].module,
            evidence={"modules": {u.module: u.relative for u in large[:50]}, "median": median},
            fix="lower the learning rate or lora_alpha; check the scaling is applied once"))
    if median > 0:
        far = [u for u in ordered if u not in large and (
            u.relative > UPDATE_OUTLIER_FACTOR * median or
            (0 < u.relative < median / UPDATE_OUTLIER_FACTOR))]
        if far:
            u = far[0]
            side = "larger" if u.relative > median else "smaller"
            findings.append(adapter_update_outlier.finding(
                f"{len(far)} layers' updates are more than {UPDATE_OUTLIER_FACTOR:g} times "
                f"{'away from' if len(far) > 1 else side + ' than'} the median layer's: "
                f"{u.module} {u.relative:.3g} against a median of {median:.3g}",
                location=u.module,
                evidence={"modules": {x.module: x.relative for x in far[:50]}, "median": median},
                fix="compare the learning rate, scaling and gradient those layers got with the "
                    "others'"))
    zero = [u for u in ups if u.relative == 0]
    summary = (f"relative update from {values[0]:.3g} to {values[-1]:.3g} across {len(ups)} "
               f"layers (median {median:.3g})" + (f"; {len(zero)} layers add nothing (LD511)"
                                                  if zero else ""))
    ctx.summary["update_relative_median"] = median
    return Outcome(findings, summary=summary, views=[table])


@rule("LD515", "adapter-has-no-effect", command="adapter", severity=Severity.ERROR)
def adapter_has_no_effect(ctx) -> Outcome:
    """Loaded the way it will be served, the adapter does not change the base model's logits.

    ## What it does
    Takes the base model's logits on the probe batch, loads the adapter exactly as it will be
    loaded (PEFT's `PeftModel.from_pretrained`, or your own load function with `--apply`) and
    compares: the served logits must differ from the base's. A load that raises is reported
    here too.

    ## Why is this bad?
    An error: an adapter that changes nothing is a run whose result is lost, whatever the
    cause (keys that match nothing, LD510; factors still zero, LD511; a rank PEFT refuses,
    LD513). People find out from the outputs, days later, as "the fine-tune did nothing".

    ## Example
    ```python
    model = PeftModel.from_pretrained(base, "out")   # only a warning; serves the base
    ```

    ## Use instead
    ```
    loradoctor check-adapter out --model BASE    # before shipping the folder
    ```
    """
    from ..model.saved_adapter.effect import effect
    from ..model.saved_adapter.files import artifact
    art, eff = artifact(ctx), effect(ctx)
    limit = eff.identity_rtol * max(1.0, eff.base_max_abs)
    if eff.load_error is not None:
        return Outcome([adapter_has_no_effect.finding(
            f"{_loader(art)} cannot load the adapter on this base: {eff.load_error}",
            location=str(art.file), evidence={"error": eff.load_error},
            fix="see LD513: the file and its config (or the base) do not belong together")],
            summary="the adapter cannot be loaded")
    diff = eff.served_diff
    if diff is None:
        raise SkipCheck("the adapter's effect was not measured")
    if not math.isfinite(diff):
        return Outcome([adapter_has_no_effect.finding(
            f"served with the adapter, the logits are not finite (see LD512)",
            location=str(art.file), evidence={"served_max_abs_diff": diff},
            fix="save the last checkpoint whose tensors are finite")],
            summary="the served logits are not finite")
    if diff <= limit:
        why = []
        if eff.intended_diff is not None and eff.intended_diff > limit:
            why.append(f"its keys match nothing (LD510): put right, it moves them by up to "
                       f"{eff.intended_diff:.3g}")
        elif all(u.relative == 0 for u in eff.updates):
            why.append("every update is zero (LD511)")
        return Outcome([adapter_has_no_effect.finding(
            f"loaded by {_loader(art)}, the adapter changes the base model's logits by at most "
            f"{diff:.2g} on the probe batch (tolerance {limit:.1e}): the served model is the "
            f"base" + (f"; {why[0]}" if why else ""), location=str(art.file),
            evidence={"served_max_abs_diff": diff, "tolerance": limit,
                      "intended_max_abs_diff": eff.intended_diff,
                      "probe": ctx.probe["source"]},
            fix="see LD510 / LD511 for why nothing is loaded")],
            summary=f"served logits equal the base's (max |diff| {diff:.2g})")
    ctx.summary["served_max_abs_logit_diff"] = diff
    return Outcome(summary=f"loaded by {_loader(art)}, it moves the base's logits by up to "
                           f"{diff:.3g} ({eff.restored} of {eff.adapters} adapters loaded)")


@rule("LD516", "merged-adapter-differs", command="adapter", severity=Severity.ERROR)
def merged_adapter_differs(ctx) -> Outcome:
    """Merged into the base weights, the adapter gives other logits than unmerged.

    ## What it does
    Loads the adapter (with its keys put right, if LD510 found a pattern), takes the logits,
    merges `W + scaling * B @ A` into the base weights (PEFT's `merge_adapter`, or the same
    sum for your own adapters) and compares. The tolerance is relative to the largest logit
    (1e-3 in float32: merging reorders the float math).

    ## Why is this bad?
    An error: deployment usually merges (vLLM, llama.cpp, `merge_and_unload` before export),
    so the model that ships is the merged one. When it differs from the unmerged one you
    evaluated, the adapter is not the plain linear map `scaling * B @ A` the merge assumes (a
    scaling stored differently from the one applied, DoRA saved without its config).

    ## Example
    ```python
    merged = model.merge_and_unload()   # generates differently from the model you evaluated
    ```

    ## Use instead
    ```python
    # keep the adapter a plain scaling * B(A(x)) and its config the one it was trained with
    ```
    """
    from ..model.saved_adapter.effect import effect
    eff = effect(ctx)
    if eff.merge_error is not None:
        return Outcome([merged_adapter_differs.finding(
            f"merging the adapter into the base weights failed: {eff.merge_error}",
            evidence={"error": eff.merge_error}, severity=Severity.WARNING)],
            summary="merge not measured")
    if eff.merged_diff is None:
        raise SkipCheck("no adapter was loaded to merge")
    limit = eff.merge_rtol * max(1.0, eff.base_max_abs)
    if not math.isfinite(eff.merged_diff):
        raise SkipCheck("the unmerged logits are not finite (LD512)")
    if eff.merged_diff > limit:
        return Outcome([merged_adapter_differs.finding(
            f"merged into the base weights, the adapter gives logits up to "
            f"{eff.merged_diff:.4g} away from the unmerged model (tolerance {limit:.1e})",
            evidence={"max_abs_diff": eff.merged_diff, "tolerance": limit},
            fix="make the adapter exactly scaling * B(A(x)) and keep its config the one it was "
                "trained with")],
            summary=f"merged vs unmerged logits max |diff| {eff.merged_diff:.4g} > {limit:.1e}")
    return Outcome(summary=f"merged equals unmerged (logits max |diff| {eff.merged_diff:.2g} <= "
                           f"{limit:.1e})")


RULES = [adapter_keys_match_no_module, adapter_factor_all_zero, adapter_tensor_not_finite,
         adapter_disagrees_with_config, adapter_update_outlier, adapter_has_no_effect,
         merged_adapter_differs]
