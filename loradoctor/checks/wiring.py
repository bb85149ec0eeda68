"""LD2xx: adapter wiring. Which layer's weights and which adapter each patched forward really
uses, class-level patches, double patches, adapters never called, PEFT config entries that
match nothing, and coverage.

Every rule here reads the same two measurements (`model/shared.discovery`,
`model/layer_probe.module_probe`): the adapters found in the adapted model, and each adapted
layer called on its own with every adapter's factors set to distinct random values. Static evidence (what a patched forward's
closure cells, defaults and partial arguments hold) and behavioural evidence (what the layer
computes) are both reported. LD205 reads the PEFT config instead (`model/peft_targets.py`),
LD210 the coverage (`model/coverage.py`).
"""

from __future__ import annotations

from ..findings import Severity, Table
from ..rules import Outcome, SkipCheck, rule

# torch and the measurements are imported inside the checks: importing the registry (for
# `loradoctor rules`, check-dataset) must stay light.

MAX_LISTED = 8         # findings listed one by one; the rest are counted in one finding
MAX_TABLE_ROWS = 20    # rows of the aliasing table
BIND_FIX = ("bind the loop values when you patch: def forward(x, original_forward=module.forward, "
            "lora=lora), a factory function, functools.partial, or a wrapper module")


def _shape(width: int) -> str:
    from ..model.layer_probe import PROBE_SHAPE
    return f"({', '.join(map(str, (*PROBE_SHAPE, width)))})"


def _static_text(v) -> str:
    parts = {}
    for via, kind, name in v.static_refs:
        where, _, var = via.rpartition(" ")
        target = f"{name}.forward" if kind == "forward" else f"{name}'s adapter"
        parts.setdefault(where or via, []).append(f"{var} = {target}")
    fn = v.adapter.host.__dict__.get("forward")
    what = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", None) \
        or type(fn).__name__
    holds = {"closure variable": "closure holds", "default argument": "defaults bind",
             "partial argument": "partial binds"}
    return "; ".join(f"{what}'s {holds.get(k, 'references hold')} {', '.join(p)}"
                     for k, p in parts.items())


def _behaviour_text(v) -> str:
    own = v.adapter
    runs = _runs_text(v)
    if v.status in ("aliased", "unchecked") and v.residual is None and v.error is None:
        # Static mode (model/static.py): no layer was called, the code is the evidence.
        return ("not called (static mode: the weights have no values); the patched forward's "
                "code reads that reference when it runs" if v.status == "aliased" else
                "not called (static mode: the weights have no values)")
    if v.status == "crash" or v.ran_at_width is not None:
        text = f"on a {_shape(own.in_features)} input it raises {v.error}"
        if v.ran_at_width is not None and runs:
            text += f"; on a {_shape(v.ran_at_width)} input it returns exactly {runs}"
        return text
    if v.status == "aliased":
        return f"on a {_shape(own.in_features)} input it returns exactly {runs}, not its own output"
    if v.status == "ok":
        return f"on a {_shape(own.in_features)} input it still computes its own weight and " \
               f"adapter, so the reference is not used"
    return f"on a {_shape(own.in_features)} input its output is {v.status}"


def _runs_text(v) -> str:
    fwd = v.forward_of
    adp = v.adapter_of
    if fwd is None and adp is None:
        return ""
    weight = f"{fwd}'s output" if fwd else "its own output"
    if adp == "":
        return f"{weight} with no adapter"
    if adp is None:
        return f"{weight} plus its own adapter"
    if adp == fwd:
        return f"{weight} plus that layer's adapter"
    return f"{weight} plus the adapter of {adp}"


def _target(v) -> tuple[str | None, str | None]:
    """(whose forward it runs, whose adapter it adds): behaviour first, static as fallback."""
    fwd = v.forward_of or next(iter(v.static_forward_of), None)
    adp = v.adapter_of if v.adapter_of else next(iter(v.static_adapter_of), None)
    return fwd, adp


@rule("LD201", "closure-aliased-forward", command="model", severity=Severity.ERROR,
      needs_values=False)
def closure_aliased_forward(ctx) -> Outcome:
    """A patched layer computes with another layer's weights or adapter (late-bound closure).

    ## What it does
    For every adapted layer, reads what its patched `forward` holds (closure cells, default
    arguments, `functools.partial` arguments, bound methods) and flags references to another
    layer's forward or adapter. Then calls the layer on its own with an input of its own width,
    with every adapter set to distinct random values, and compares the output with
    `F.linear(x, own weight, own bias) + own adapter(x)`; when it does not match, it finds the
    layer and adapter that do explain the output (trying other widths when the call crashes).
    The message names both layers, e.g. `model.layers.0.self_attn.q_proj runs the forward of
    model.layers.1.mlp.down_proj`. A shape crash of the whole model caused by this is
    explained here rather than shown as a crash.

    ## Why is this bad?
    Python closures capture variables, not values. A `forward_with_lora` defined in a loop
    looks up `original_forward` and `lora` when it is called, after the loop has ended: every
    patched layer runs the *last* layer's weights and adapter. With different shapes the model
    crashes deep in attention with a matmul shape error; with equal shapes it runs and
    silently trains garbage. An error when the layer's output (or its crash) confirms it; a
    warning when only the closure holds another layer and the output is still the layer's
    own (a reference kept, not used).

    ## Example
    ```python
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            lora = LoRA(module.in_features, module.out_features, rank)
            module.lora = lora
            original_forward = module.forward
            def forward_with_lora(x):
                return original_forward(x) + lora(x)   # late binding
            module.forward = forward_with_lora
    ```

    ## Use instead
    ```python
            def forward_with_lora(x, original_forward=module.forward, lora=lora):
                return original_forward(x) + lora(x)
            module.forward = forward_with_lora
    ```
    or a factory function, `functools.partial(fn, module.forward, lora)`, or a wrapper module.
    """
    from ..model.identity import adapted_forward
    from ..model.layer_probe import module_probe
    from ..model.shared import adapters_or_skip
    adapters_or_skip(ctx, linear_only=True)
    verdicts = module_probe(ctx).verdicts
    bad = [v for v in verdicts if v.aliased or v.status == "crash"]
    findings, rows = [], []
    explained: dict[tuple, str] = {}
    for v in bad:
        fwd, adp = _target(v)
        confirmed = v.status in ("aliased", "crash")
        static = _static_text(v) if v.static_refs else None
        behaviour = _behaviour_text(v)
        if fwd or adp:
            head = f"{v.adapter.name} runs the forward of {fwd}" if fwd else \
                f"{v.adapter.name} adds the adapter of {adp}"
            if fwd and adp:
                head += " and its adapter" if adp == fwd else f" and adds the adapter of {adp}"
        else:
            head = f"{v.adapter.name} does not compute its own layer"
        evidence_parts = [f"Statically: {static}" if static else "Statically: nothing "
                          "(the forward does not hold the other layer itself)",
                          f"Behaviourally: {behaviour}"]
        # Layers aliased the same way as one already explained get a one-line message.
        signature = (fwd, adp, tuple(via for via, _, _ in v.static_refs), v.status,
                     v.ran_at_width is not None)
        if signature in explained:
            same_as = explained[signature]
            how = "raises the same error on its own width" if v.status == "crash" or \
                v.ran_at_width is not None else "returns that layer's output" \
                if v.residual is not None else "its code reads the same reference"
            text = f"{head} (the same closure as {same_as}; {how})"
        else:
            explained[signature] = v.adapter.name
            text = f"{head}. {'. '.join(evidence_parts)}"
        severity = Severity.ERROR if confirmed else Severity.WARNING
        findings.append(closure_aliased_forward.finding(
            text,
            location=v.adapter.name, severity=severity, fix=BIND_FIX,
            evidence={"module": v.adapter.name, "forward_of": fwd, "adapter_of": adp,
                      "static": [{"via": via, "kind": k, "target": n}
                                 for via, k, n in v.static_refs],
                      "behaviour": {"status": v.status, "width": v.width, "error": v.error,
                                    "ran_at_width": v.ran_at_width, "residual": v.residual}}))
        rows.append([v.adapter.name, fwd or "(own)", (adp or "(own)") if adp != "" else "(none)",
                     " + ".join(x for x, on in (("closure", bool(static)),
                                                ("crash" if v.status == "crash" or v.ran_at_width
                                                 else "output" if v.residual is not None
                                                 else "code", confirmed)) if on)])
    targets = sorted({_target(v)[0] or "" for v in bad} - {""})
    fwd_error = None
    if bad and any(v.status in ("crash",) or v.ran_at_width for v in bad):
        fwd_error = adapted_forward(ctx).error
    if fwd_error and findings:
        findings[0].message += f". The adapted model's forward fails because of this: {fwd_error}"
        findings[0].evidence["model_forward_error"] = fwd_error
    shown = findings[:MAX_LISTED]
    if len(findings) > MAX_LISTED:
        rest = findings[MAX_LISTED:]
        shown.append(_more(closure_aliased_forward, [f.location for f in rest],
                           "compute with another layer's weights or adapter", BIND_FIX,
                           severity=max((f.severity for f in rest), key=_rank)))
    views = []
    if rows:
        more = len(rows) - MAX_TABLE_ROWS
        rows = rows[:MAX_TABLE_ROWS] + ([[f"... {more} more", "", "", ""]] if more > 0 else [])
        views.append(Table(
            "aliasing pairs: the layer, and whose weights and adapter it really uses",
            ["layer", "runs the forward of", "adds the adapter of", "seen in"], rows))
    n = len(verdicts)
    if bad:
        summary = f"{len(bad)} of {n} adapted layers compute with another layer's weights or " \
                  f"adapter" + (f" (all with {targets[0]})" if len(targets) == 1 else "")
    else:
        summary = f"each of {n} adapted layers computes its own weight plus its own adapter"
    return Outcome(shown, summary=summary, views=views)


def _rank(sev: Severity) -> int:
    return {Severity.INFO: 0, Severity.WARNING: 1, Severity.ERROR: 2}[sev]


def _more(rule, names: list[str], what: str, fix: str, severity: Severity | None = None):
    """One finding for the layers past the first `MAX_LISTED`: how many, and the first six."""
    return rule.finding(f"{len(names)} more layers {what}: " + ", ".join(names[:6])
                        + (" ..." if len(names) > 6 else ""), location=names[0], fix=fix,
                        severity=severity, evidence={"modules": names})


@rule("LD202", "forward-patched-on-class", command="model", severity=Severity.ERROR,
      needs_values=False)
def forward_patched_on_class(ctx) -> Outcome:
    """A layer class's `forward` was replaced, so every instance of the class runs the patch.

    ## What it does
    Looks at the class of every module in the adapted model and flags a `forward` that was
    assigned from outside the class body (`nn.Linear.forward = f`, `type(module).forward = f`),
    counting the instances in the model that now run it, adapted or not.

    ## Why is this bad?
    A class attribute is shared by every instance: the output head, layers you meant to leave
    alone, other models in the same process (a reference copy, an evaluation model), all run
    the patched function. Done in a loop it also aliases every layer to the last one patched.

    ## Example
    ```python
    type(module).forward = forward_with_lora          # nn.Linear.forward, for every Linear
    ```

    ## Use instead
    ```python
    module.forward = forward_with_lora                # this instance only (bind loop values)
    ```
    or replace the layer with a wrapper module.
    """
    from ..model.shared import adapters_or_skip, discovery
    disc = discovery(ctx)
    if not disc.adapters and not disc.class_patched:
        adapters_or_skip(ctx)
    hosts = {id(a.host) for a in disc.adapters}
    for a in disc.adapters:  # the adapters' own A/B linears are not "layers without an adapter"
        if a.owner is not None:
            hosts |= {id(m) for m in a.owner.modules() if m is not a.base}
    findings = []
    model = ctx.adapted
    for info in disc.class_patched:
        cls_name = info["class"]
        instances = [(n, m) for n, m in model.named_modules()
                     if f"{type(m).__module__}.{type(m).__qualname__}" == cls_name
                     or any(f"{k.__module__}.{k.__qualname__}" == cls_name
                            for k in type(m).__mro__)]
        plain = [n for n, m in instances if id(m) not in hosts]
        msg = (f"{cls_name}.forward is replaced on the class by {info['function']} "
               f"({info['file']}:{info['line']}): all {len(instances)} instances in the model "
               f"run it")
        if plain:
            msg += f", including {len(plain)} without an adapter (e.g. {plain[0]})"
        msg += ", and so does every other instance in the process"
        findings.append(forward_patched_on_class.finding(
            msg, location=cls_name,
            evidence={**info, "instances_in_model": len(instances), "without_adapter": plain[:20]},
            fix="patch the instance (module.forward = ..., loop values bound) or replace the "
                "layer with a wrapper module"))
    patched = sum("forward" in a.host.__dict__ for a in disc.adapters)
    summary = (f"{len(findings)} class forward(s) replaced" if findings else
               f"no class forward replaced; {patched} layers patched per instance" if patched
               else "no class forward replaced; the adapters run in their modules' own forward")
    return Outcome(findings, summary=summary)


@rule("LD203", "module-patched-twice", command="model", severity=Severity.ERROR,
      needs_values=False)
def module_patched_twice(ctx) -> Outcome:
    """A layer is patched twice (two adapters stacked) or its patched forward calls itself.

    ## What it does
    Counts the nested patched functions in each adapted layer's `forward` (a patch of a
    patch), flags wrappers around wrappers and layers adapted twice, and calls each layer on
    its own to catch a forward that recurses into itself (`RecursionError`).

    ## Why is this bad?
    Running `apply_lora` twice (a notebook cell run again, a resume path that re-applies) adds
    two adapters to each layer; the first one is usually no longer registered, so it is not
    trained or saved but still changes the output. A patched forward that calls
    `module.forward` (or `module(x)`) looks itself up at call time and recurses until Python
    gives up.

    ## Example
    ```python
    apply_lora(model); apply_lora(model)        # each layer now adds two adapters
    def forward_with_lora(x, module=module):
        return module.forward(x) + lora(x)      # module.forward is this function: recursion
    ```

    ## Use instead
    ```python
    if not hasattr(module, "lora"):             # apply once
        ...
    def forward_with_lora(x, original_forward=module.forward, lora=lora):
        return original_forward(x) + lora(x)    # the forward as it was before the patch
    ```
    """
    from ..model.layer_probe import module_probe
    from ..model.shared import adapters_or_skip
    adapters = adapters_or_skip(ctx)
    verdicts = {id(v.adapter): v for v in module_probe(ctx).verdicts}
    findings = []
    fix = "apply the adapters once, and call the forward saved before patching, not module.forward"
    names: dict[str, int] = {}
    for a in adapters:
        names[a.name] = names.get(a.name, 0) + 1
    for a in adapters:
        v = verdicts.get(id(a))
        if v is not None and v.status == "recursion":
            hint = " (it looks up .forward at call time)" if v.names_forward else ""
            findings.append(module_patched_twice.finding(
                f"calling {a.name} recurses until {v.error}: its patched forward calls the "
                f"module's current forward, which is itself{hint}", location=a.name, fix=fix,
                evidence={"module": a.name, "error": v.error}))
        elif v is not None and v.levels >= 2:
            s = v.measured_scaling
            extra = f"; its output adds {s / a.declared_scaling:.1f} times the declared " \
                    f"update" if s and a.declared_scaling else ""
            findings.append(module_patched_twice.finding(
                f"{a.name}'s forward is patched {v.levels} times: it wraps a forward that was "
                f"already patched, so {v.levels} adapter updates are added{extra}",
                location=a.name, fix=fix, evidence={"module": a.name, "levels": v.levels}))
        elif a.nested:
            findings.append(module_patched_twice.finding(
                f"{a.name} is wrapped twice: its base layer {a.base_name} sits inside another "
                f"adapter wrapper, so two adapters are stacked on one layer",
                location=a.name, fix=fix, evidence={"module": a.name, "base": a.base_name}))
    seen = set()
    for name, count in names.items():
        if count > 1 and name not in seen and not any(f.location == name for f in findings):
            seen.add(name)
            findings.append(module_patched_twice.finding(
                f"{name} carries {count} adapters", location=name, fix=fix,
                evidence={"module": name, "adapters": count}))
    shown = findings[:MAX_LISTED]
    if len(findings) > MAX_LISTED:
        shown.append(_more(module_patched_twice, [f.location for f in findings[MAX_LISTED:]],
                           "are patched twice or recurse", fix))
    summary = (f"{len(findings)} of {len(adapters)} adapted layers are patched twice or recurse"
               if findings else f"each of {len(adapters)} adapted layers is adapted once")
    return Outcome(shown, summary=summary)


@rule("LD204", "adapter-never-called", command="model", severity=Severity.ERROR,
      needs_values=False)
def adapter_never_called(ctx) -> Outcome:
    """An adapter is attached to a layer but the layer's forward never calls it.

    ## What it does
    Sets every adapter's factors to random values and calls each adapted layer on its own: a
    layer whose output is still exactly `F.linear(x, weight, bias)` never used its adapter.

    ## Why is this bad?
    The adapter is outside the computation graph, so it gets no gradient: training runs,
    the loss moves only through whatever else is trainable, and the saved adapter is the
    initialisation. Typical causes: `module.lora = LoRA(...)` without patching the forward, a
    patched forward that returns `original_forward(x)` alone, or an adapter applied to a copy
    of the layer rather than the layer in the model.

    ## Example
    ```python
    module.lora = LoRA(module.in_features, module.out_features, rank)   # attached ...
    # ... but module.forward is never replaced
    ```

    ## Use instead
    ```python
    module.lora = lora
    module.forward = lambda x, f=module.forward, lora=lora: f(x) + lora(x)
    ```
    """
    from ..model.layer_probe import module_probe
    from ..model.shared import adapters_or_skip
    adapters_or_skip(ctx, linear_only=True)
    verdicts = module_probe(ctx).verdicts
    dead = [v for v in verdicts if v.status == "no-delta"
            and v.adapter.declared_scaling != 0 and not v.aliased]
    findings = []
    for v in dead[:MAX_LISTED]:
        a = v.adapter
        how = "its forward is not patched" if not v.patched and a.style == "attached" else \
            "its forward does not add the adapter's output"
        measured = (f"{a.name}'s output is exactly F.linear(x, weight, bias) with its adapter "
                    f"{a.owner_name or a.A_name} (r={a.rank}) set to random values: {how}"
                    if v.residual is not None else  # static mode: read from the code
                    f"{a.name}'s adapter {a.owner_name or a.A_name} (r={a.rank}) is attached but "
                    f"{how} (read from the code: static mode)")
        findings.append(adapter_never_called.finding(
            f"{measured}, so the adapter gets no gradient", location=a.name,
            evidence={"module": a.name, "patched": v.patched, "style": a.style,
                      "relative_delta": v.residual},
            fix="make the layer's forward return original_forward(x) + lora(x)"))
    if len(dead) > MAX_LISTED:
        findings.append(_more(adapter_never_called, [v.adapter.name for v in dead[MAX_LISTED:]],
                              "never call their adapter",
                              "make the layer's forward return original_forward(x) + lora(x)"))
    summary = (f"{len(dead)} of {len(verdicts)} adapted layers never call their adapter"
               if dead else f"each of {len(verdicts)} adapted layers adds its adapter's output")
    return Outcome(findings, summary=summary)


FIELD_EFFECT = {
    "target_modules": "PEFT adapts only what the other entries match",
    "modules_to_save": "PEFT neither trains nor saves a full copy of it",
    "layers_to_transform": "no layer with that index carries an adapter",
    "layers_pattern": "PEFT finds no layer index through it",
}


def peft_config_check(ctx):
    """The PEFT config's entries matched one by one (memoised), or SkipCheck without one."""
    from ..model.peft_targets import (base_of, check_configs, live_configs, original_names,
                                      weight_names)

    def compute():
        model = ctx.adapted
        configs = live_configs(model) or live_configs(base_of(model))
        if configs:
            source = "the model's peft_config"
        elif ctx.peft_kwargs is not None:
            configs, source = {"default": ctx.peft_kwargs}, "--peft"
        else:
            return None
        base = base_of(model)
        return check_configs(configs, original_names(base), source, weight_names(base))
    result = ctx.memo("peft_targets", compute)
    if result is None:
        raise SkipCheck("no PEFT config: the adapters are not PEFT's")
    return result


@rule("LD205", "peft-target-matches-nothing", command="model", severity=Severity.ERROR,
      needs_values=False)
def peft_target_matches_nothing(ctx) -> Outcome:
    """An entry of the PEFT config (`target_modules`, `modules_to_save`, a layer) matches nothing.

    ## What it does
    Takes the PEFT config (from `--peft`, a `PeftModel`, or a model your apply code adapted
    with PEFT) and matches every explicit entry on its own against the model's module names,
    with PEFT's own rules: each `target_modules` name (or each alternative of a
    `target_modules` regex), each `modules_to_save` name, each `layers_to_transform` index and
    each `layers_pattern`. An entry that matches no module is reported with the closest real
    module names.

    ## Why is this bad?
    An error, because the run trains something other than what the config says: PEFT raises
    only when *no* target entry matches. `["q_proj", "v_prj"]` silently adapts `q_proj` alone
    on every layer (the coverage is even, so nothing looks wrong), `modules_to_save=["lm_haed"]`
    silently leaves the head frozen and out of the checkpoint, and `layers_to_transform=[28,
    29, 30, 31]` on a 30-layer model silently adapts two layers. A list written for another
    architecture (`c_attn`, `query_key_value` on a Llama) fails the same way.

    ## Example
    ```python
    LoraConfig(r=8, target_modules=["q_proj", "v_prj"], modules_to_save=["lm_haed"])
    ```

    ## Use instead
    ```python
    LoraConfig(r=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    ```
    (print `[n for n, _ in model.named_modules()]` to see the real names).
    """
    result = peft_config_check(ctx)
    findings = []
    for u in result.unmatched:
        entry = repr(u.entry) if isinstance(u.entry, str) else str(u.entry)
        adapter = f" of adapter {u.adapter!r}" if u.adapter != "default" else ""
        effect = FIELD_EFFECT[u.field]
        targeted = result.matched.get(u.adapter, [])
        if u.field == "target_modules" and targeted:
            kinds = sorted({n.rsplit(".", 1)[-1] for n in targeted})
            effect += f" ({len(targeted)} modules: {', '.join(kinds[:6])})"
        if u.field == "layers_to_transform":
            text = (f"layers_to_transform index {entry}{adapter} is no layer of the targeted "
                    f"modules, so {effect}" + (f"; they exist in {u.closest[0]}" if u.closest
                                               else ""))
            fix = "keep only layer indexes the model has" + (f" ({u.closest[0]})" if u.closest
                                                             else "")
        else:
            what = f"{u.field} entry {entry}"
            if u.pattern is not None:
                what = f"the alternative {entry} of the target_modules regex {u.pattern!r}"
            near = f"; closest real names: {', '.join(u.closest)}" if u.closest else \
                "; no module name is close to it"
            text = f"{what}{adapter} matches no module of the model, so {effect}{near}"
            fix = (f"use a name the model has ({u.closest[0]})" if u.closest else
                   "keep only names this model has (print [n for n, _ in model.named_modules()])")
        findings.append(peft_target_matches_nothing.finding(
            text, location=f"peft_config.{u.field}", fix=fix,
            evidence={"field": u.field, "entry": u.entry, "adapter": u.adapter,
                      "pattern": u.pattern, "closest": u.closest, "source": result.source}))
    checked = ", ".join(f"{field} {n}" for field, n in result.checked.items())
    total = sum(result.checked.values())
    if findings:
        summary = f"{len(findings)} of {total} PEFT config entries match no module ({checked})"
    elif total:
        summary = f"each of {total} PEFT config entries matches a module ({checked})"
    else:
        summary = "the PEFT config names no entry to check (all-linear or PEFT's defaults)"
    return Outcome(findings, summary=summary)


@rule("LD210", "uneven-adapter-coverage", command="model", severity=Severity.WARNING,
      needs_values=False)
def uneven_adapter_coverage(ctx) -> Outcome:
    """Adapters cover the layers unevenly, the output head or embeddings, or the base is not frozen.

    ## What it does
    Builds a table of which linear layers carry an adapter, by kind (q/k/v/o, gate/up/down,
    others) and by layer. Flags a kind adapted in some layers but not others, a model where
    no adapter was found although adapter code was given, adapters on `lm_head` or the
    embeddings, and trainable parameters outside the adapters (the base not frozen), with the
    trainable count and percentage. This is the one finding for a base left trainable: the
    gradient, training and fp16 rules count what follows from it and point here. Many apply
    functions leave the base trainable and the training script freezes it afterwards
    (MiniMind's does); `--freeze-base` (`freeze_base=True` in the API) freezes every
    non-adapter parameter before the checks, to check the pipeline as such a script trains it.

    ## Why is this bad?
    Target-module patterns fail silently: a regex that matches `layers.1` but not
    `layers.10`, a name that exists only in some blocks, or an `isinstance` check that misses
    a fused layer leave part of the model without adapters. An adapted output head is large
    and changes every token's logits. A base that is not frozen turns LoRA into a full
    fine-tune with the memory bill and forgetting that come with it. Warnings, because each
    can be meant (adapters on the last layers only, a trained head, a full fine-tune); no
    adapter at all after your adapter code ran is an error. A PEFT config entry that matches
    nothing is LD205's error.

    ## Example
    ```python
    target_modules = ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"]  # 2 of 30
    ```

    ## Use instead
    ```python
    target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]   # every block
    for p in model.parameters(): p.requires_grad = False         # then add the adapters
    ```
    """
    from ..model.coverage import coverage, trainable_count
    from ..model.freeze import frozen_by_us
    from ..model.shared import discovery
    disc = discovery(ctx)
    model = ctx.adapted
    if not disc.adapters:
        if ctx.apply_spec is None and ctx.peft_kwargs is None:
            raise SkipCheck("no adapter code given (--apply SPEC or --peft ...)")
        n_lin = len(disc.linears)
        return Outcome([uneven_adapter_coverage.finding(
            f"no adapter found: none of the {n_lin} linear layers carries a low-rank pair "
            f"(A (r, in) and B (out, r)) after {ctx.apply_spec or 'peft'} ran",
            severity=Severity.ERROR, evidence={"linear_layers": n_lin},
            fix="check that the apply function attaches adapters to the model it receives "
                "(or returns the adapted model)")],
            summary=f"0 of {n_lin} linear layers adapted")
    cov = coverage(disc)
    findings = _coverage_findings(disc, cov)
    count = trainable_count(model, disc.adapter_param_ids())
    if count.outside:
        findings.append(_unfrozen_base(count))
    pct = count.percent
    ctx.summary.update({"adapters": len(disc.adapters), "linear_layers": len(disc.linears),
                        "trainable_parameters": count.trainable,
                        "trainable_percent": round(pct, 4)})
    adapted = {a.name for a in disc.adapters}
    n_adapted = sum(1 for n in disc.linears if n in adapted)
    summary = (f"{n_adapted} of {len(disc.linears)} linear layers adapted; {count.trainable:,} "
               f"of {count.total:,} parameters trainable ({pct:.2f}%)")
    frozen = frozen_by_us(ctx)
    if frozen is not None:
        summary += (f"; --freeze-base froze {frozen.numel:,} base parameters in "
                    f"{len(frozen.frozen)} tensors" if frozen.frozen else
                    "; --freeze-base found the base already frozen")
        ctx.summary["freeze_base"] = {"tensors": len(frozen.frozen), "parameters": frozen.numel}
    return Outcome(findings, summary=summary,
                   views=[_coverage_table(cov.cells, cov.kinds, cov.layers)])


def _coverage_findings(disc, cov) -> list:
    """LD210's findings on where the adapters are: a kind adapted in some layers but not in
    others (kinds with the same gaps together), the output head, the embeddings."""
    from ..model.layer_names import kind_of, layer_ranges
    findings = []
    for (n_present, have, missing), group in cov.gaps().items():
        findings.append(uneven_adapter_coverage.finding(
            f"{', '.join(group)} layers are adapted in {len(have)} of {n_present} layers "
            f"(not in {layer_ranges(list(missing))})", location=f"{group[0]} projections",
            evidence={"kinds": group, "adapted_layers": list(have),
                      "missing_layers": list(missing)},
            fix="match the target modules by their short name (q_proj) so every block "
                "gets one"))
    head = [a for a in disc.adapters if kind_of(a.name) == "lm_head"]
    if head:
        findings.append(uneven_adapter_coverage.finding(
            f"the output head {head[0].name} is adapted (r={head[0].rank}, "
            f"{head[0].A.numel() + head[0].B.numel():,} parameters): every token's logits move "
            f"with it", location=head[0].name, evidence={"module": head[0].name},
            fix="leave lm_head out of the target modules unless you mean to train it"))
    emb = [a for a in disc.adapters if a.layer_type == "embedding"]
    if emb:
        findings.append(uneven_adapter_coverage.finding(
            f"the embeddings {emb[0].name} are adapted", location=emb[0].name,
            evidence={"modules": [a.name for a in emb]},
            fix="leave the embeddings out of the target modules unless you mean to train them"))
    return findings


def _unfrozen_base(count):
    """LD210's one finding for a base left trainable: LD404, LD406 and LD304 point here for
    what follows from it (base gradients, base weights that move, fp16 losing base
    gradients)."""
    names = count.outside_names
    return uneven_adapter_coverage.finding(
        f"{count.outside:,} trainable parameters are outside the adapters ({len(names)} "
        f"tensors, e.g. {names[0]}): the base is not frozen, so {count.percent:.2f}% of the "
        f"model trains. A training script may still freeze it after the apply function; "
        f"--freeze-base (freeze_base=True) checks the pipeline as such a script trains it",
        location=names[0],
        evidence={"trainable": count.trainable, "total": count.total,
                  "outside_adapters": count.outside, "tensors": names[:50], "freeze_base": False,
                  "follows": ["LD304", "LD404", "LD406"]},
        fix="freeze the base (p.requires_grad = False for every parameter) before "
            "attaching the adapters, or rerun with --freeze-base if your training script "
            "freezes it")


def _coverage_table(cells, kinds, layers) -> Table:
    """One row per run of layers with the same coverage; ✓ adapted, · not, blank: no such layer."""
    rows = []
    def row_of(layer):
        return [cells[layer].get(k, "") if k in cells[layer] else "" for k in kinds]
    start = None
    for i, layer in enumerate(layers):
        if start is None:
            start = i
        last = i == len(layers) - 1
        if last or row_of(layers[i + 1]) != row_of(layer):
            label = str(layers[start]) if start == i else f"{layers[start]}-{layer}"
            rows.append([label, *row_of(layer)])
            start = None
    if None in cells:
        rows.append(["outside layers", *[cells[None].get(k, "") if k in cells[None] else ""
                                         for k in kinds]])
    return Table("adapter coverage (✓ adapted, · not adapted)", ["layers", *kinds], rows)


RULES = [closure_aliased_forward, forward_patched_on_class, module_patched_twice,
         adapter_never_called, peft_target_matches_nothing, uneven_adapter_coverage]
