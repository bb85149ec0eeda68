"""Several processes (torchrun, `accelerate launch`): every rank reaches one verdict.

Under `torch.distributed` each rank checks its own batches (labels are rank-local), the model
is checked on rank 0 only (it is the same model on every rank), and the ranks then agree:

- `gather(payload)`: every rank's Report (or the input error it met) goes to every rank, and
  `merged()` joins them into one Report whose findings name their rank (`rank 1: batch 0 row
  3`). Every rank sees the same merged Report, so every rank raises, or every rank stops, at
  the same step; rank 0 prints it.
- `worst_severity(level)`: one all-reduce of a small integer, so a step in which no rank found
  anything costs one collective and nothing more (the watchdog's per-step agreement).

A rank that fails to load its inputs still joins the collectives (with the error in place of
its report), so the others never wait in a collective it will not reach: a broken rank makes
every rank stop with the same error, not a gloo "Connection closed by peer" on the others.
Without `torch.distributed` (or with one process) every function here is the identity.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .findings import CheckResult, Report, Severity, Status

# A severity as a number, so the ranks can agree on the worst with one all-reduce (MAX).
LEVELS = {None: 0, Severity.INFO: 1, Severity.WARNING: 2, Severity.ERROR: 3}
STATUS_ORDER = (Status.SKIP, Status.PASS, Status.WARN, Status.FAIL, Status.CRASH)


@dataclass(frozen=True)
class World:
    """This process's rank and how many processes run the job (0 of 1 without distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def several(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return World()
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def gather(payload: Any) -> list[Any]:
    """Every rank's `payload` (any picklable object), in rank order, on every rank."""
    w = world()
    if not w.several:
        return [payload]
    import torch.distributed as dist
    parts: list = [None] * w.size
    dist.all_gather_object(parts, payload)
    return parts


def worst_severity(level: int) -> int:
    """The largest of every rank's `level` (a `LEVELS` value), on every rank."""
    w = world()
    if not w.several:
        return level
    import torch
    import torch.distributed as dist
    device = "cpu"
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        device = f"cuda:{torch.cuda.current_device()}"
    value = torch.tensor([level], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def level_of(findings) -> int:
    return max((LEVELS[f.severity] for f in findings), default=0)


def merged(parts: list[tuple[Report | None, str | None]], command: str) -> Report:
    """One Report from every rank's: each rule once (its worst status across the ranks), each
    finding and view naming its rank. With one part, that part's report as it is."""
    if len(parts) == 1 and parts[0][0] is not None:
        return parts[0][0]
    out = Report(command)
    by_code: dict[str, list[tuple[int, CheckResult]]] = {}
    for rank, (report, _) in enumerate(parts):
        if report is None:
            continue
        for result in report.results:
            by_code.setdefault(result.code, []).append((rank, result))
        if rank == 0 or not out.summary:
            out.summary.update(report.summary)
        out.views.extend(report.views)
    out.results = [_merged_result(results) for results in by_code.values()]
    out.summary["ranks"] = len(parts)
    failed = sorted({rank for rank, (report, error) in enumerate(parts)
                     if error is not None or (report is not None and not report.ok)})
    if failed:
        out.summary["failed_ranks"] = failed
    return out


def _merged_result(results: list[tuple[int, CheckResult]]) -> CheckResult:
    """A rule's results on several ranks as one: the worst status; the findings and views of
    every rank, named by rank when the rule ran on more than one."""
    worst_rank, worst = max(results, key=lambda rr: STATUS_ORDER.index(rr[1].status))
    if len(results) == 1:
        return worst
    out = copy.copy(worst)
    out.findings = [_on_rank(f, rank) for rank, r in results for f in r.findings]
    out.views = [_view_on_rank(v, rank) for rank, r in results for v in r.views]
    out.duration_s = max(r.duration_s for _, r in results)
    if len({r.summary for _, r in results}) > 1:
        out.summary = _summary(results, worst_rank, worst)
    return out


def _summary(results: list[tuple[int, CheckResult]], worst_rank: int, worst) -> str:
    """One line for a rule whose ranks measured different things: the worst rank's line when it
    found something, else the first rank's, with how the others ended."""
    clean = [rank for rank, r in results if r.status in (Status.PASS, Status.SKIP)]
    if worst.status in (Status.PASS, Status.SKIP):
        first_rank, first = results[0]
        return f"{len(results)} ranks pass; rank {first_rank}: {first.summary}"
    text = f"rank {worst_rank}: {worst.summary}"
    if clean:
        text += f" (rank{'s' if len(clean) > 1 else ''} {', '.join(map(str, clean))} " \
                f"pass{'' if len(clean) > 1 else 'es'})"
    return text


def _on_rank(finding, rank: int):
    f = copy.copy(finding)
    f.message = f"rank {rank}: {finding.message}"
    f.location = f"rank {rank}: {finding.location}" if finding.location else f"rank {rank}"
    f.evidence = {**finding.evidence, "rank": rank}
    return f


def _view_on_rank(view, rank: int):
    v = copy.copy(view)
    v.title = f"rank {rank}: {view.title}"
    return v
