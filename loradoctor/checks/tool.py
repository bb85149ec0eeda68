"""LD0xx: findings about loradoctor itself. The engine emits them; these entries document them."""

from ..findings import Severity
from ..rules import rule


@rule("LD001", "check-crashed", command="tool", severity=Severity.ERROR)
def check_crashed(ctx):
    """A check raised an exception instead of returning its measurement.

    ## What it does
    Every check runs inside the engine; when one raises, its result becomes `crash`, the
    exception is recorded as this finding, and the other checks still run. The traceback is
    shown under `-v` and kept in the JSON evidence.

    ## Why is this bad?
    A crashed check measured nothing, so its silence is not a pass: the report exits 1 so CI
    does not read a crash as a clean bill of health.

    ## Example
    `LD201 closure-aliased-forward crashed: RuntimeError: ...` under a model whose forward
    cannot run at all.

    ## Use instead
    Rerun with `-v`, read the traceback, and report it if it is loradoctor's fault; with
    `--ignore LD201` the rest of the report can still be used.
    """
    raise NotImplementedError("emitted by the engine")


@rule("LD002", "check-skipped", command="tool", severity=Severity.INFO)
def check_skipped(ctx):
    """A check could not run in this environment (no GPU, a dtype the device lacks, a missing package).

    ## What it does
    Records, as an info finding, each check that was skipped for a reason of the environment
    rather than of the input, with the reason.

    ## Why is this bad?
    It is not bad in itself, but a skipped check is a question left open: fp16 numerics that
    were not measured on this machine may still overflow on the training machine.

    ## Example
    `LD302 fp16-low-headroom skipped: fp16 matmul is not supported on this device`.

    ## Use instead
    Run the check where the dependency or device exists (for example in CI with a GPU).
    """
    raise NotImplementedError("emitted by the engine")


RULES = [check_crashed, check_skipped]
