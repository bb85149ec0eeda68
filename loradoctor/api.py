"""The Python API, and the one place where a run's inputs become contexts and rules.

`check(...)` returns a `Report`; `gate(...)` prints it on stderr and raises `UnhealthyPipeline`
when it holds an error. Every argument takes what the CLI takes (a path, a SPEC string) or the
live object (an `nn.Module`, a tokenizer, records, a dataset class, function or instance,
collated batches). The CLI, the Trainer callback and the pytest plugin all call `prepare()`,
so they run the same rules on the same contexts.

What a run is given is left as found: the model's parameters, buffers, grads, `requires_grad`
flags and modes (each check restores what it touches, `model.safety`), the global RNG states
(torch, CUDA, Python, NumPy: forked around the whole run), a live tokenizer's settings
(padding and truncation sides and settings, special tokens, chat template) and the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import distributed
from .errors import InputError, UnhealthyPipeline
from .findings import Report
from .inputs.tokenizer_state import restorer

COMMANDS = ("check-dataset", "check-model", "check-adapter")
_FAMILY = {"check-dataset": "dataset", "check-model": "model", "check-adapter": "adapter"}


@dataclass
class Part:
    """One command's share of a run: its context and the rules that read it."""

    command: str
    ctx: Any
    rules: list


@dataclass
class Run:
    """Inputs checked and loaded, rules chosen: `execute()` measures and returns the Report."""

    parts: list[Part]
    title: str
    _keep: list[Callable[[], Any]] = field(default_factory=list)  # restorers, run after

    @property
    def rules(self) -> list:
        return [r for p in self.parts for r in p.rules]

    @property
    def command(self) -> str:
        return self.parts[0].command if len(self.parts) == 1 else "check"

    def set_progress_console(self, console) -> None:
        for p in self.parts:
            p.ctx.progress_console = console

    def execute(self, on_progress: Callable | None = None) -> Report:
        from . import engine
        from .model.safety import rng_preserved

        report = Report(self.command)
        try:
            with rng_preserved():
                for p in self.parts:
                    part = engine.run(p.command, p.rules, p.ctx, on_progress)
                    report.results.extend(part.results)
                    report.summary.update(part.summary)
                    report.views.extend(part.views)
                    if getattr(p.ctx, "shard", None) is not None:  # what `merge` reads
                        from .shards import partial
                        report.partial = partial(p.ctx, p.rules)
        finally:
            self.close()
        return report

    def close(self) -> None:
        """Put back what the run borrowed (tokenizer settings) and remove temporary files."""
        while self._keep:
            self._keep.pop()()
        for p in self.parts:
            cleanup = getattr(p.ctx, "cleanup", None)
            if callable(cleanup):
                cleanup()


def prepare(*, model: Any = None, tokenizer: Any = None, data: Any = None, dataset: Any = None,
            batches: Iterable | None = None, tokenized: bool = False, apply: Any = None,
            apply_args: dict | None = None, peft: Any = None, adapter: Any = None,
            model_args: dict | None = None, max_length: int | None = None, dtypes: Sequence[str] | str | None = None,
            device: str | None = None, train_steps: int = 0, freeze_base: bool = False,
            select: Sequence[str] | str | None = None, ignore: Sequence[str] | str | None = None,
            fuzz: int = 0, seed: int = 0, show: int = 3, workers: int = 1,
            fp16_headroom: float = 4.0, command: str | None = None,
            shard: str | tuple[int, int] | None = None, static: bool = False,
            offload: bool | dict | str | None = None, quantize: str | None = None,
            collator: Any = None, collator_args: dict | None = None,
            real_dtypes: bool = False) -> Run:
    """Check and load the inputs (raising `InputError` for what cannot be read) and choose rules.

    `command` is one of `check-dataset`, `check-model`, `check-adapter` (the CLI's); without
    it, every command whose inputs are given runs: data checks when there is data, a dataset
    or batches; model checks when there is a model; adapter checks when there is an adapter.

    `model` is a directory, an `nn.Module`, or a SPEC (`file.py:NAME`, `pkg.mod:NAME`: the
    user's own model function or class, built with `model_args`). With a model, the data
    checks read labels the way its loss does (`model.convention`); without, the HF way.

    `shard` (`"2/8"` or `(2, 8)`) checks only the second of 8 contiguous shares of the records;
    the Report then carries `partial`, which `loradoctor merge` joins (`shards.py`).

    `static=True` builds the model on the meta device and runs only the model rules that need
    no weight values (`model/static.py`); a directory whose weights do not fit in memory, or
    that holds only its config, is checked that way without asking. `offload=True` (or
    accelerate's `max_memory`, `{"cpu": "8GB"}` / `"cpu=8GB"`) loads the model directory with
    `device_map="auto"` over GPU, CPU and disk instead, so the value rules run on a model
    larger than one device (`model/offload.py`).

    `quantize` (`"4bit"` or `"8bit"`) loads the model directory quantized by bitsandbytes as
    QLoRA guides do (4-bit NF4 computing in bf16, or 8-bit); with `peft`,
    `prepare_model_for_kbit_training` runs before `get_peft_model`. A live model already
    quantized is recognised as it is and needs no argument.

    `real_dtypes=True` runs the numerics' fp16 pass on a CPU (and bf16, where the CPU has no
    bf16 kernels) in torch's own slow kernels; by default their matmuls and attention are
    emulated in fp32 on the low-precision values, as a GPU computes them, and the report says so.

    `collator` (a SPEC, a class built with the tokenizer and `collator_args`, or a callable
    taking a list of dataset items) is given the dataset's items (the user's dataset, or the
    token rows), and the labels it makes are compared with the dataset's own. Given with
    `batches` and a dataset object, the dataset is where the batches came from (a trainer's
    `train_dataset` and its `collate_fn`): the batches are judged, the dataset is collated.
    """
    from . import registry

    if command is not None and command not in COMMANDS:
        raise InputError(f"command {command!r}: expected one of {', '.join(COMMANDS)}")
    has_data = data is not None or dataset is not None or batches is not None
    commands = [command] if command else [
        c for c, wanted in (("check-dataset", has_data), ("check-model", model is not None
                                                          and adapter is None),
                            ("check-adapter", adapter is not None)) if wanted]
    if not commands:
        raise InputError("nothing to check: give data, dataset or batches (with a tokenizer), "
                         "a model, or an adapter")
    chosen_select, chosen_ignore = _codes(select), _codes(ignore)
    keep: list[Callable[[], Any]] = []
    parts: list[Part] = []
    titles: list[str] = []
    try:
        _hold_quantized(model, keep)
        for cmd in commands:
            if cmd == "check-dataset":
                ctx, title = _dataset_context(tokenizer, data, dataset, batches, tokenized,
                                              max_length, show, workers, fuzz, seed, keep,
                                              model, model_args)
                _set_collator(ctx, collator, collator_args)
                if shard is not None:
                    from .inputs.sources import parse_shard
                    ctx.shard = parse_shard(shard)
                    title += " · shard {}/{}".format(*ctx.shard)
            elif cmd == "check-model":
                # Data for the probe batch must be a file; live records feed the data checks.
                ctx, title = _model_context(model, tokenizer, _path_or_none(data), apply,
                                            apply_args, peft, dtypes, device, train_steps,
                                            freeze_base, fp16_headroom, keep, model_args)
                ctx.static = bool(static)
                ctx.real_dtypes = bool(real_dtypes)
                _set_quantize(ctx, quantize, offload)
                if offload is not None and offload is not False:
                    from .model.offload import parse_max_memory
                    ctx.offload = parse_max_memory(offload)
            else:
                ctx, title = _adapter_context(adapter, model, apply, device, model_args)
            rules = registry.select(registry.rules_for(_FAMILY[cmd]), chosen_select,
                                    chosen_ignore)
            parts.append(Part(cmd, ctx, rules))  # before validating: close() cleans it up
            titles.append(title)
            ctx.validate_inputs()
            if cmd == "check-model":  # static mode and offloaded weights each skip some rules
                from .model.offload import fall_back_to_static
                fall_back_to_static(ctx, registry.static_codes())
                parts[-1].rules = registry.applicable(parts[-1].rules, static=ctx.static,
                                                      offload=ctx.offload is not None)
            elif cmd == "check-dataset" and ctx.labels_only:  # the labels alone: no truth
                parts[-1].rules = registry.applicable(parts[-1].rules, tokenizer=False)
    except BaseException:
        Run(parts, "", keep).close()  # put back what the parts built so far borrowed
        raise
    return Run(parts, " + ".join(_noted(t, p.ctx) for t, p in zip(titles, parts)), keep)


def check(**kwargs: Any) -> Report:
    """Run loradoctor on a pipeline; see `prepare()` for the arguments. Returns the Report."""
    from .model.safety import rng_preserved

    # Loading inputs draws random numbers too (rich draws link ids from Python's `random` at
    # import), so the RNG states are forked around the whole call, not only around the checks.
    with rng_preserved():
        return prepare(**kwargs).execute()


def gate(*, quiet: bool = False, verbose: bool = False, every_rank: bool = False,
         **kwargs: Any) -> Report:
    """`check()`, the doctor view on stderr, and `UnhealthyPipeline` when an error is found.

    One line at the top of a training script stops it before its first step when the pipeline
    would waste the run: `loradoctor.gate(model=model, tokenizer=tokenizer, dataset=train_ds)`.
    Under several processes (torchrun, accelerate) every rank calls it with its own data: see
    `check_on_every_rank()`; rank 0 prints, and every rank raises or none does.
    """
    from .model.safety import rng_preserved

    with rng_preserved():  # as in check(): loading and printing draw random numbers too
        from .render import concise, console, print_report
        report, title = check_on_every_rank(every_rank=every_rank, **kwargs)
        if not quiet and distributed.world().is_main:
            print_report(report, title=f"loradoctor gate · {title}", verbose=verbose,
                         out=console(stderr=True))
    if not report.ok:
        raise UnhealthyPipeline(report, concise(report))
    return report


def check_on_every_rank(*, every_rank: bool = False, **kwargs: Any) -> tuple[Report, str]:
    """`check()` where each process of a distributed job holds its own data: (Report, title).

    Every rank checks its own data (labels are rank-local); the model, the same on every rank,
    is checked on rank 0 only (`every_rank=True`: on each). The ranks' reports are joined
    (`distributed.merged`: each finding names its rank) and every rank returns the same Report,
    so they all act alike. An input error on any rank is an `InputError` on every rank. With
    one process this is `prepare(**kwargs).execute()`.
    """
    w = distributed.world()
    share = kwargs if w.is_main or every_rank else _data_share(kwargs)
    report = error = None
    title = ""
    if share is not None:
        try:
            run = prepare(**share)
            report, title = run.execute(), run.title
        except InputError as exc:
            if not w.several:
                raise
            error = str(exc)
    parts = distributed.gather((report, error, title))
    failed = [f"rank {rank}: {err}" for rank, (_, err, _) in enumerate(parts) if err]
    if failed:
        raise InputError("; ".join(failed))
    merged = distributed.merged([(r, e) for r, e, _ in parts],
                                report.command if report else "check")
    title = parts[0][2] or next((t for _, _, t in parts if t), "")
    return merged, (f"{title} · {w.size} ranks" if w.several else title)


def _data_share(kwargs: dict) -> dict | None:
    """What a rank other than 0 checks: its own data (the model only for how labels are
    read), or nothing."""
    if all(kwargs.get(k) is None for k in ("data", "dataset", "batches")):
        return None
    return {**kwargs, "command": "check-dataset"}


# --- building contexts ----------------------------------------------------------------------


def _codes(value: Sequence[str] | str | None) -> list[str]:
    from .registry import parse_codes
    if value is None:
        return []
    if isinstance(value, str):
        return parse_codes(value)
    return parse_codes(",".join(value))


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, Path))


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if _is_path(value) else None


def _name(value: Any) -> str:
    if _is_path(value):
        return str(value)
    return getattr(value, "name_or_path", None) or type(value).__name__


def _noted(title: str, ctx: Any) -> str:
    """The title with how the model reads labels (measured, or the HF way assumed)."""
    note = getattr(ctx, "convention_note", None)
    return f"{title} · {note}" if note else title


def _set_tokenizer(ctx, tokenizer: Any, keep: list) -> None:
    """A tokenizer directory, or a live tokenizer (its settings put back after the run)."""
    if _is_path(tokenizer):
        ctx.tokenizer_dir = Path(tokenizer)
    elif tokenizer is not None:
        ctx.tokenizer_given = tokenizer
        keep.append(restorer(tokenizer))


def _set_model(ctx, model: Any, model_args: dict | None) -> None:
    """A model directory, the user's model SPEC (with its args) or a live nn.Module on `ctx`."""
    from .model.user_model import is_spec

    if is_spec(model):
        ctx.model_spec, ctx.model_args = str(model), dict(model_args or {})
        return
    if model_args:
        raise InputError("--model-arg: model arguments are for a model SPEC (--model "
                         "file.py:NAME), not a directory or a model object")
    if _is_path(model):
        ctx.model_dir = Path(model)
    else:
        ctx.model_given = model


def _dataset_context(tokenizer, data, dataset, batches, tokenized, max_length, show, workers,
                     fuzz, seed, keep, model, model_args=None):
    from .context import DatasetContext

    if max_length is not None and max_length < 1:
        raise InputError(f"--max-length {max_length}: must be a positive number")
    if tokenizer is None and _is_path(model) and Path(model).is_dir():
        from .inputs.pretrained import has_tokenizer
        if has_tokenizer(model):
            tokenizer = model  # the tokenizer saved beside the model
    # Without a tokenizer, token rows and batches are judged by what their labels alone show.
    labels_only = tokenizer is None and (batches is not None or tokenized)
    if tokenizer is None and not labels_only:
        raise InputError("tokenizer: checking data needs the tokenizer the model trains with "
                         "(a directory or the tokenizer object)")
    ctx = DatasetContext(max_length=max_length, show=show, workers=max(1, workers),
                         tokenized=bool(tokenized), labels_only=labels_only)
    if model is not None:
        _set_model(ctx, model, model_args)
    _set_tokenizer(ctx, tokenizer, keep)
    if data is not None:
        if _is_path(data):
            ctx.data = Path(data)
        elif tokenized:
            ctx.rows_given = _records(data)  # token rows: a datasets object or row dicts
        else:
            ctx.records_given = _records(data)
    if isinstance(dataset, str):
        ctx.dataset_spec = dataset
    elif dataset is not None and _is_stream(dataset):
        ctx.rows_given = dataset  # an IterableDataset of token rows: read as a stream
    elif dataset is not None:
        ctx.dataset_given = dataset
    if batches is not None:
        ctx.batches_given = list(batches)  # read once: a dataloader may shuffle or be a stream
    if tokenized and ctx.data is None and ctx.rows_given is None:
        raise InputError("tokenized: needs a data file of token rows, or the rows (data=)")
    if tokenized and (ctx.dataset_spec or ctx.dataset_given is not None):
        raise InputError("--tokenized rows already hold labels: give --dataset or --tokenized, "
                         "not both")
    if fuzz:
        for name, value in (("fuzz", fuzz), ("seed", seed)):
            if hasattr(ctx, name):
                setattr(ctx, name, value)
    what = _name(data) if data is not None else (
        f"{len(ctx.batches_given)} batches" if batches is not None else _name(dataset))
    title = f"check-dataset · {what}{' (token rows)' if tokenized else ''} · " + (
        "no tokenizer: the labels alone" if labels_only else f"tokenizer {_name(tokenizer)}")
    return ctx, title


def _set_collator(ctx, collator: Any, collator_args: dict | None) -> None:
    """The collator on a dataset context; a dataset object given beside batches is the
    collator's source (the trainer's dataset), not a dataset of its own to judge."""
    if collator is None:
        if collator_args:
            raise InputError("--collator-arg: arguments are for a --collator class")
        return
    ctx.collator_args = dict(collator_args or {})
    if isinstance(collator, str):
        ctx.collator_spec = collator
    else:
        ctx.collator_given = collator
    if ctx.batches_given is not None and ctx.dataset_given is not None:
        ctx.collator_source, ctx.dataset_given = ctx.dataset_given, None


def _records(data: Any) -> Any:
    """Live conversation records: a list, any iterable, or a Hugging Face dataset of rows (a
    `datasets.Dataset` / `IterableDataset` is kept as it is and read in batches, never listed)."""
    from .inputs.sources import is_live_dataset
    if is_live_dataset(data):
        return data
    if isinstance(data, dict):
        return [data]
    try:
        return [dict(r) if not isinstance(r, dict) else r for r in data]
    except TypeError:
        raise InputError(f"data: {type(data).__name__} is neither a path nor an iterable of "
                         f"records") from None


def _is_stream(dataset: Any) -> bool:
    """A `datasets.IterableDataset`: rows without an index, read as a stream."""
    from .inputs.sources import is_live_dataset
    return is_live_dataset(dataset) and not hasattr(dataset, "__len__")


def _model_context(model, tokenizer, data, apply, apply_args, peft, dtypes, device,
                   train_steps, freeze_base, fp16_headroom, keep, model_args=None):
    from .context import ModelContext
    from .inputs import specs
    from .inputs.pretrained import resolve_device, torch_dtype

    if model is None:
        raise InputError("model: check-model needs a model directory or an nn.Module")
    names = tuple(d.strip() for d in dtypes.split(",")) if isinstance(dtypes, str) \
        else tuple(dtypes) if dtypes else None
    for d in names or ():
        torch_dtype(d)
    if fp16_headroom <= 1:
        raise InputError(f"--fp16-headroom {fp16_headroom:g}: must be above 1")
    ctx = ModelContext(apply_kwargs=dict(apply_args or {}), peft_kwargs=specs.peft_kwargs(peft),
                       dtypes=names, train_steps=max(0, int(train_steps or 0)))
    ctx.fp16_headroom = fp16_headroom
    if hasattr(ctx, "freeze_base"):
        ctx.freeze_base = bool(freeze_base)
    _set_model(ctx, model, model_args)
    if ctx.model_given is None:
        ctx.device = resolve_device(device or "auto")
    else:
        ctx.device = device or _device_of(model)
    if isinstance(apply, str):
        ctx.apply_spec = apply
    elif apply is not None:
        ctx.apply_given = apply
    _set_tokenizer(ctx, tokenizer, keep)
    if data is not None:
        ctx.data = Path(data)
    what = apply if isinstance(apply, str) else (
        getattr(apply, "__name__", "apply") if apply is not None else
        f"peft {peft}" if peft is not None else
        "as given" if ctx.model_given is not None else "no adapter code")
    return ctx, f"check-model · {_name(model)} · {what}"


def _hold_quantized(model: Any, keep: list) -> None:
    """A live model with bitsandbytes layers runs them as training does for the whole run (no
    CPU repacking, the 8-bit training matmul) and gets their state back at the end."""
    if model is None or _is_path(model):
        return
    from .model.quantized_state import held
    release = held(model)
    if release is not None:
        keep.append(release)


def _set_quantize(ctx, quantize: str | None, offload: Any) -> None:
    """`quantize` on a model context: for a model directory, and not with --offload."""
    from .inputs.pretrained import check_quantize

    ctx.quantize = check_quantize(quantize)
    if quantize is None:
        return
    if ctx.model_dir is None:
        raise InputError(f"--quantize {quantize}: loads a model directory; a model object or "
                         f"your model code is checked as it is (quantize it yourself)")
    if offload is not None and offload is not False:
        raise InputError("--quantize and --offload: give one of them, not both")


def _adapter_context(adapter, model, apply, device, model_args=None):
    try:
        from .context import AdapterContext
    except ImportError:
        raise InputError("check-adapter is not available in this version") from None
    from .inputs.pretrained import resolve_device
    if model is None:
        raise InputError("model: check-adapter needs the base model the adapter was trained on")
    from .model.user_model import is_spec
    ctx = AdapterContext(Path(adapter), None if is_spec(model) else Path(model),
                         apply_spec=apply, device=resolve_device(device or "auto"))
    _set_model(ctx, model, model_args)
    return ctx, f"check-adapter · {adapter} · base {model}"


def _device_of(model) -> str:
    for p in model.parameters():
        return str(p.device)
    return "cpu"
