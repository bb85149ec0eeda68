"""`LoraDoctorCallback`: the gate and the watchdog inside `transformers.Trainer` and TRL.

```python
from loradoctor.integrations.transformers import LoraDoctorCallback
trainer = SFTTrainer(..., callbacks=[LoraDoctorCallback()])
```

At train start it runs `loradoctor.api` on the trainer's model (already PEFT-wrapped), its
processing class (or `LoraDoctorCallback(tokenizer=...)`) and the first `batches` batches its own
dataloader yields (after the collator), before any optimizer step: the labels the trainer is
about to train on, whatever built them. Without a tokenizer (a plain `Trainer` given no
`processing_class`) the batches are still read for what their labels alone show (no supervised
token, labels shifted by hand, mask values the loss does not ignore); the rules that need the
template's truth say in one line that they need the tokenizer. While training runs it feeds the `Watchdog` the loss of each optimizer step
(captured from the model's forward output, so a NaN the Trainer's `logging_nan_inf_filter`
hides is seen) and the trainable gradients' norm (read before the optimizer steps).

`on_error`: `"raise"` raises `UnhealthyPipeline` out of `trainer.train()`, `"stop"` ends
training (`control.should_training_stop`) and leaves the findings on `callback.report`,
`"warn"` prints them and goes on. Every finding lands on `callback.report` either way.

Whatever `report_to` the run uses (TensorBoard, W&B, MLflow, ...) gets loradoctor's numbers
through the Trainer's own logs at each logging step: the first batches' supervised share, the
trainable gradient norm, the B factors' norm and growth, a count per rule that fired; and the
gate's report as text where the integration takes text (`dashboards.py`).

The dataloader's own collator (`collate_fn`) is also given the first items of its dataset, and
the labels it makes are compared with the dataset's (LD118: a collator that rebuilds labels
from `input_ids` throws the dataset's masks away); packed batches are judged sample by sample
(LD119, LD120).

Reading the first batches does not change what the trainer then trains on: the RNG states and
every sampler generator are put back, and the dataloader's iteration is closed.

Under several processes (torchrun, `accelerate launch`) every rank checks its own batches, the
model is checked on rank 0 only (`every_rank=True`: on each), and the ranks agree on one
verdict (`loradoctor.distributed`): every rank raises, or every rank stops, at the same step,
and rank 0 prints the one report, naming the rank whose data failed.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .. import distributed
from ..findings import Report
from ..model.run_state import WatchOptions
from ..watchdog import ON_ERROR, Watchdog, findings_report


class LoraDoctorCallback(TrainerCallback):
    """Gate the run at train start; watch the loss and gradients at every step."""

    def __init__(self, on_error: str = "raise", batches: int = 2, select=None, ignore=None,
                 quiet: bool = False, check_model: bool = True, every_rank: bool = False,
                 options: WatchOptions | None = None, tokenizer: Any = None,
                 **check_kwargs: Any):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}: expected one of {', '.join(ON_ERROR)}")
        self.on_error = on_error
        self.n_batches = batches
        self.select, self.ignore = select, ignore
        self.quiet = quiet
        self.check_model = check_model
        self.every_rank = every_rank  # several processes: check the model on every rank
        # The tokenizer the labels are judged with: this one, else the trainer's processing
        # class; without one (a plain Trainer given none) the labels are read alone.
        self.tokenizer = tokenizer
        self.options = options
        self.check_kwargs = check_kwargs  # e.g. dtypes=("fp32", "bf16"), train_steps=0
        self.report = Report("trainer")
        self.watch: Watchdog | None = None
        self.dashboards = None  # loradoctor's figures in the run's own logs (dashboards.py)
        self._hook = None
        self._losses: list = []

    # --- train start: the gate ---------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None,
                       train_dataloader=None, **kwargs):
        from .. import api
        from ..errors import UnhealthyPipeline
        from ..render import concise
        from .dashboards import Dashboards

        self.dashboards = Dashboards.attach(self.report, model)
        tokenizer = self.tokenizer or _tokenizer_of(processing_class)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer = None  # no template's truth: the batches' labels are read alone
        # The dtypes the run trains in, unless the callback was told which to measure.
        inputs: dict[str, Any] = {"select": self.select, "ignore": self.ignore,
                                  "dtypes": run_dtypes(args), **self.check_kwargs}
        if train_dataloader is not None and self.n_batches > 0:
            inputs["batches"] = first_batches(train_dataloader, self.n_batches)
            inputs.update(collator_inputs(train_dataloader))
            if tokenizer is not None:
                inputs["tokenizer"] = tokenizer
        if self.check_model and model is not None:
            inputs["model"] = model
        if "batches" in inputs or "model" in inputs:
            # Every rank checks its own batches; the model is checked on rank 0 (every_rank:
            # on each); every rank gets the same joined report, so all raise or stop alike.
            gate_report, title = api.check_on_every_rank(every_rank=self.every_rank, **inputs)
            self.report.results.extend(gate_report.results)
            self.report.summary.update(gate_report.summary)
            title = f"loradoctor · trainer start · {title}"
            if self.dashboards is not None:  # before a raise: the dashboards show why
                self.dashboards.log_gate(args, state, control, gate_report, title,
                                         inputs.get("batches"))
            if not self.quiet or not gate_report.ok:
                self._print(gate_report, title)
            if not gate_report.ok:
                if self.on_error == "raise":
                    self._detach_dashboards()  # on_train_end will not run
                    raise UnhealthyPipeline(gate_report, concise(gate_report))
                if self.on_error == "stop":
                    control.should_training_stop = True
                    return control
        self.watch = Watchdog(model, on_error=self.on_error, options=self.options,
                              select=self.select, ignore=self.ignore)
        if model is not None:
            self._hook = model.register_forward_hook(self._capture_loss)
        return control

    # --- during training: the watchdog --------------------------------------------------------

    def _capture_loss(self, module, inputs, output):
        if not module.training:
            return  # evaluation forwards are not training steps
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if loss is not None:
            self._losses.append(loss.detach())

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if control.should_training_stop and model is not None:
            # Stopped at train start: the Trainer still finishes the step it began, so drop the
            # gradients and the optimizer skips every parameter: nothing is trained.
            model.zero_grad(set_to_none=True)
            return control
        if self.watch is not None:
            self._grad_norm = self.watch.grad_norm()
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.watch is None:
            return control
        losses, self._losses = self._losses, []
        loss = None
        if losses:
            import torch
            loss = torch.stack([x.float().reshape(()) for x in losses]).mean()
        findings = self.watch.step(loss, grad_norm=getattr(self, "_grad_norm", None),
                                   step=state.global_step)
        if self.dashboards is not None:
            self.dashboards.grad_norm = self.watch.state.grad_norm
        if findings:
            self.report.results.extend(r for r in self.watch.report.results
                                       if r not in self.report.results)
            if self.on_error == "warn" or not self.quiet:
                self._print(findings_report(findings),
                            f"loradoctor · step {state.global_step}")
            if self.watch.should_stop:
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._detach_dashboards()
        return control

    def _detach_dashboards(self) -> None:
        if self.dashboards is not None:
            self.dashboards.detach()

    def _print(self, report: Report, title: str) -> None:
        """On stderr, once per job: several processes hold the same report; rank 0 prints."""
        if not distributed.world().is_main:
            return
        from ..render import console, print_report
        print_report(report, title=title, out=console(stderr=True))


def run_dtypes(args) -> tuple[str, ...]:
    """The dtypes this run trains in, from its TrainingArguments: fp32 (the reference every
    other dtype is compared with), and bf16 or fp16 when mixed precision is on. The gate
    measures those, not all three."""
    return ("fp32", *(["bf16"] if getattr(args, "bf16", False) else []),
            *(["fp16"] if getattr(args, "fp16", False) else []))


def _tokenizer_of(processing_class):
    """The text tokenizer of a processing class (a tokenizer, or a processor holding one)."""
    if processing_class is None:
        return None
    return getattr(processing_class, "tokenizer", None) or processing_class


def first_batches(dataloader, n: int) -> list:
    """The first `n` collated batches, leaving the dataloader and every RNG as they were."""
    from ..model.safety import rng_preserved

    generators = _generators(dataloader)
    states = [(g, g.get_state()) for g in generators]
    out = []
    with rng_preserved():
        it = iter(dataloader)
        try:
            for _ in range(n):
                out.append(_to_cpu(next(it)))
        except StopIteration:
            pass
        finally:
            close = getattr(it, "close", None)
            if callable(close):
                close()
            end = getattr(dataloader, "end", None)  # accelerate's shard: leave the loop state
            if callable(end):
                try:
                    end()
                except Exception:  # noqa: BLE001 - already ended
                    pass
    for g, state in states:
        g.set_state(state)
    return out


def collator_inputs(dataloader) -> dict[str, Any]:
    """The dataloader's collator and the dataset it collates (`collator=`, `dataset=` beside
    the batches): a dataset read by index only, so a stream is never read twice."""
    from torch.utils.data import IterableDataset

    base = getattr(dataloader, "base_dataloader", None)
    base = dataloader if base is None else base  # not `or`: bool() would ask a stream its len
    collate = getattr(dataloader, "collate_fn", None) or getattr(base, "collate_fn", None)
    dataset = getattr(dataloader, "dataset", None)
    if dataset is None:
        dataset = getattr(base, "dataset", None)
    indexed = hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") \
        and not isinstance(dataset, IterableDataset)
    if collate is None or not indexed:
        return {}
    return {"collator": collate, "dataset": dataset}


def _generators(dataloader) -> list:
    import torch
    found, seen = [], set()
    objs = [dataloader, getattr(dataloader, "sampler", None),
            getattr(dataloader, "batch_sampler", None),
            getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
            getattr(dataloader, "base_dataloader", None)]
    base = getattr(dataloader, "base_dataloader", None)
    if base is not None:
        objs += [getattr(base, "sampler", None), getattr(base, "batch_sampler", None),
                 getattr(getattr(base, "batch_sampler", None), "sampler", None)]
    for obj in objs:
        if obj is None:
            continue
        for name in ("generator", "synchronized_generator"):
            g = getattr(obj, name, None)
            if isinstance(g, torch.Generator) and id(g) not in seen:
                seen.add(id(g))
                found.append(g)
    return found


def _to_cpu(batch):
    if isinstance(batch, dict) or hasattr(batch, "items"):
        return {k: (v.detach().cpu() if hasattr(v, "detach") else v) for k, v in batch.items()}
    return batch


__all__ = ["LoraDoctorCallback", "first_batches"]
