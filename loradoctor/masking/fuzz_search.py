"""`check-dataset --fuzz N`: generated conversations through the user's dataset code.

After the data file's own records, N conversations drawn from `loradoctor.strategies` (in the
role orders the chat template accepts, with the markup of its tokenizer) go through the user's
labelling function, or through their dataset class reading a one-record temporary file (in the
system's temporary folder, never the user's, in the data file's record shape). Each sample is
compared with the oracle by the same `Comparer` that judges the file's records, so a failure
means exactly what it means for a record of the file, and lands under the rule it breaks.

A failure is shrunk by hypothesis to the smallest conversation that still breaks a rule the
file's records did not already break, then searched again for a different rule, up to
`MAX_FAILURES` times, within N generated conversations in all. The search is deterministic
for a seed (`random=Random(seed)`, nothing derandomized from the code) and hypothesis's example
database is off, so nothing is written into the user's project. Conversations the template
refuses, or whose replies the oracle cannot locate, are not judged (counted as skipped).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from ..findings import TokenView
from .compare import Comparer, Comparison
from .markers import Marker
from .oracle import Oracle, Truth
from ..inputs.user_dataset import UserData

MAX_FAILURES = 4  # distinct failures searched for (each a different set of broken rules)

# What breaking each rule means for one compared sample (the file's rules read the same fields).
BROKEN: dict[str, Callable[[Comparison], bool]] = {
    "LD101": lambda c: bool(c.no_supervised),
    "LD103": lambda c: bool(c.prompt_supervised) or bool(c.padding_supervised),
    "LD104": lambda c: bool(c.unsupervised_assistant),
    "LD105": lambda c: bool(c.eot_unsupervised),
    "LD106": lambda c: bool(c.shifted),
    "LD107": lambda c: bool(c.truncated_all) or bool(c.truncated_part)
    or bool(getattr(c, "cut_in_turn", None)),
    "LD108": lambda c: bool(c.eot_as_pad),
    "LD109": lambda c: bool(c.double_bos),
    "LD110": lambda c: bool(c.ids_differ) or bool(getattr(c, "unexplained", None)),
    "LD111": lambda c: bool(c.marker_miss) or bool(c.straddle_missing),
}
RAISES = "LD115"  # the user's code raised on (or could not return) a generated conversation


def broken(c: Comparison) -> list[str]:
    """The rules one compared sample breaks, in code order."""
    return [code for code, test in BROKEN.items() if test(c)]


@dataclass
class Verdict:
    """One generated conversation judged: the rules it breaks and what showed it."""

    codes: list[str]
    comparison: Comparison | None = None  # None when the user's code raised
    error: str | None = None  # what the user's code raised, in one line with its place
    tokens: int = 0  # the template's tokens for the conversation


@dataclass
class Failure:
    """A shrunk conversation that breaks `codes`, as a record ready to paste into the data file."""

    codes: list[str]
    conversation: list[dict]
    record: dict
    comparison: Comparison | None
    error: str | None
    tokens: int
    found_after: int  # generated conversations tried (in all) when it was first hit
    views: dict[str, list[TokenView]] = field(default_factory=dict)

    @property
    def jsonl(self) -> str:
        return json.dumps(self.record, ensure_ascii=False)

    @property
    def turns(self) -> int:
        return len(self.conversation)


@dataclass
class FuzzResult:
    requested: int
    seed: int
    shape: str
    known: list[str]  # rules the file's own records already break (not searched for)
    tried: int = 0  # generated conversations fed to the user's code
    skipped: int = 0  # not judged: the template refuses them or the oracle cannot place a reply
    shrink_calls: int = 0
    failures: list[Failure] = field(default_factory=list)
    duration_s: float = 0.0
    not_run: str | None = None  # why no conversation was generated

    def failures_for(self, code: str) -> list[Failure]:
        return [f for f in self.failures if code in f.codes]


class Feeder:
    """Hands one conversation to the user's code the way the contract calls it."""

    def __init__(self, user: UserData, shape: str, suffix: str, max_length: int | None,
                 folder: Path):
        self.user = user
        self.shape = shape
        self.max_length = max_length
        self.path = folder / f"generated{suffix if suffix in ('.json', '.jsonl') else '.jsonl'}"

    def item(self, conversation: list[dict]):
        """(the UserData that produced it, its Item); InputError when the user's code fails."""
        from ..strategies import as_record

        user = self.user
        if user.kind == "function":
            return user, user.item(0, conversation, "a generated conversation")
        record = as_record(conversation, self.shape)
        line = json.dumps(record, ensure_ascii=False)
        self.path.write_text(f"[{line}]\n" if self.path.suffix == ".json" else line + "\n",
                             encoding="utf-8")
        one = UserData(user.obj, user.spec, user.tokenizer, self.path, self.max_length)
        n = len(one)
        if n != 1:
            raise _ItemCount(f"{one.name} has {n} items for a file of 1 record")
        return one, one.item(0, conversation, "a generated conversation")


class _ItemCount(Exception):
    pass


def can_fuzz(obj: Any) -> str | None:
    """None when the user's dataset code can be fed new conversations, else why not."""
    if inspect.isclass(obj) or (callable(obj) and not hasattr(obj, "__getitem__")):
        return None
    return ("a dataset instance cannot be fed new conversations; give the class or the "
            "labelling function")


def run(user: UserData, oracle: Oracle, markers: list[Marker], *, n: int, seed: int,
        shape: str, suffix: str, max_length: int | None, known: list[str], show: int = 1,
        structure: Any = None, advance: Callable[[int], None] = lambda k=1: None,
        right: frozenset[str] = frozenset()) -> FuzzResult:
    """Feed up to `n` generated conversations to the user's code; shrink what breaks it.

    `right`: rules whose pattern is right for this run's model (LD106's hand shift for a model
    that does not shift labels itself), so a conversation showing it breaks nothing."""
    from ..strategies import conversations, records

    start = time.perf_counter()
    result = FuzzResult(n, seed, shape, sorted(known))
    if shape == "prompt-completion":
        strategy = records("prompt-completion", oracle.tokenizer).map(_as_conversation)
    else:
        strategy = conversations(template=oracle.tokenizer)
    folder = Path(tempfile.mkdtemp(prefix="loradoctor-fuzz-"))
    judge = Judge(oracle, Feeder(user, shape, suffix, max_length, folder), markers, structure,
                  right)
    home = _hypothesis_home(folder / "hypothesis")
    try:
        _search(result, strategy, judge, advance)
    finally:
        home.close()
        shutil.rmtree(folder, ignore_errors=True)
    result.duration_s = time.perf_counter() - start
    return result


@dataclass
class Judge:
    """Judges one generated conversation: the oracle's truth against the user's labels."""

    oracle: Oracle
    feeder: Feeder
    markers: list[Marker]
    structure: Any  # the StructureOracle, or None
    right: frozenset[str]  # rules whose pattern is right for this run's model

    def __call__(self, conversation: list[dict], views: int = 0) -> Verdict | None:
        """The rules the conversation breaks; None when it cannot be judged (the template
        refuses it, or the oracle cannot place a reply)."""
        oracle = self.oracle
        sample = oracle.sample(conversation)
        if isinstance(sample, Truth) or sample.truth.unlocated:
            return None
        try:
            one, item = self.feeder.item(conversation)
        except (InputError, _ItemCount) as exc:
            return Verdict([RAISES], error=str(exc), tokens=sample.n_tokens)
        comparer = Comparer(oracle.facts, one, self.markers, oracle.tokenizer, views,
                            **({"structure": self.structure} if self.structure is not None
                               else {}))
        comparer.add(1, "a generated conversation", item, sample)
        c = comparer.result
        return Verdict([code for code in broken(c) if code not in self.right], c,
                       tokens=sample.n_tokens)


def _search(result: FuzzResult, strategy, judge: Judge, advance: Callable[[int], None]) -> None:
    """Up to `MAX_FAILURES` rounds of hypothesis's `find`, each after a conversation that breaks
    a rule not yet covered, shrunk; what each finds goes into `result.failures`."""
    from random import Random

    from hypothesis import HealthCheck, Phase, Verbosity, find, reject, settings
    from hypothesis.errors import NoSuchExample, Unsatisfiable

    covered = set(result.known)
    state = {"phase": "generate", "calls": 0}

    def breaks_something_new(conversation: list[dict]) -> bool:
        if state["phase"] == "generate":
            result.tried += 1
            advance(1)
        else:
            result.shrink_calls += 1
        verdict = judge(conversation)
        if verdict is None:
            if state["phase"] == "generate":
                result.skipped += 1
            reject()
        hit = bool(set(verdict.codes) - covered)
        if hit and state["phase"] == "generate":
            state["phase"] = "shrink"  # every later call is hypothesis shrinking this hit
            state["first_hit"] = result.tried
        return hit

    for round_ in range(MAX_FAILURES):
        budget = result.requested - result.tried
        if budget <= 0:
            break
        state["phase"] = "generate"
        chosen = settings(max_examples=budget, database=None, derandomize=False,
                          deadline=None, verbosity=Verbosity.quiet, print_blob=False,
                          phases=(Phase.generate, Phase.shrink),
                          suppress_health_check=list(HealthCheck))
        try:
            with _quiet(), no_local_constants():
                conversation = find(strategy, breaks_something_new, settings=chosen,
                                    random=Random(f"{result.seed}:{round_}"))
        except (NoSuchExample, Unsatisfiable):
            break
        verdict = judge(conversation, views=1)
        if verdict is None:  # cannot happen: find() returns an example the condition held for
            break
        result.failures.append(Failure(
            verdict.codes, conversation, _record(conversation, result.shape),
            verdict.comparison, verdict.error, verdict.tokens,
            state.get("first_hit", result.tried),
            dict(verdict.comparison.views) if verdict.comparison is not None else {}))
        covered |= set(verdict.codes)


def _as_conversation(record: dict) -> list[dict]:
    return [{"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]}]


def _record(conversation: list[dict], shape: str) -> dict:
    from ..strategies import as_record
    return as_record(conversation, shape)


def _hypothesis_home(folder: Path) -> contextlib.ExitStack:
    """Point hypothesis's storage (its cache of constants read from source files) at `folder`.

    Its default is `.hypothesis/` in the working directory, which is the user's project; the
    previous setting comes back when the returned stack is closed.
    """
    from hypothesis import configuration

    stack = contextlib.ExitStack()
    saved = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(folder)
    stack.callback(configuration.set_hypothesis_home_dir, saved)
    return stack


@contextlib.contextmanager
def no_local_constants():
    """Draw the same conversations for a seed in every process.

    Hypothesis also draws string and number constants that it reads from the source of the
    "local" modules loaded in the process; which modules those are differs between the CLI, a
    test session and a notebook, and so would the conversations a seed draws. They are off for
    the fuzz pass (the strategies hold the template's own markup already). Reaching into
    hypothesis internals, so a version without them just keeps its default.
    """
    try:
        from hypothesis.internal.conjecture import providers
        saved, cache = providers._get_local_constants, providers.CONSTANTS_CACHE.cache
        empty = providers.Constants()
    except (ImportError, AttributeError):  # pragma: no cover - another hypothesis version
        yield
        return
    providers._get_local_constants = lambda: empty
    cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = saved
        cache.clear()


@contextlib.contextmanager
def _quiet():
    """Hypothesis warns when `find` runs inside a test; that is how our own tests call it."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- the run's fuzz pass (memoised on the context, after the file's own records) ---------


def fuzzing(ctx) -> FuzzResult | None:
    """The `--fuzz` pass of this run, or None when `--fuzz` was not given.

    Runs after the file's records were compared (`analysis`), so it searches only for rules
    they do not already break.
    """
    n = int(getattr(ctx, "fuzz", 0) or 0)
    if n <= 0:
        return None

    def compute() -> FuzzResult:
        from ..progress import progress
        from . import analysis as masking_analysis

        a = masking_analysis.analysis(ctx)
        seed = int(getattr(ctx, "seed", 0) or 0)
        shape, suffix = record_shape(ctx)
        known = broken(a.comparison) if a.comparison is not None else []
        why_not = "needs --dataset (your dataset class or labelling function)" \
            if a.user is None else can_fuzz(ctx.user_dataset)
        if why_not:
            return FuzzResult(n, seed, shape, known, not_run=why_not)
        # The token-structure oracle judges samples whose ids differ from the rendering, as
        # it does for the file's records (when this version has one).
        structure_of = getattr(masking_analysis, "structure", None)
        structure = structure_of(ctx) if structure_of is not None else None
        conv = getattr(ctx, "convention", None)  # the model's loss (`--model`), else HF's
        right = frozenset({"LD106"}) if conv is not None and conv.has_loss and not conv.shifts \
            else frozenset()
        known = [code for code in known if code not in right]
        with progress(ctx, f"fuzzing {a.user.name} with generated conversations", n) as advance:
            return run(a.user, masking_analysis.oracle(ctx), a.markers, n=n, seed=seed,
                       shape=shape, suffix=suffix, max_length=ctx.max_length, known=known,
                       structure=structure, advance=advance, right=right)
    return ctx.memo("masking.fuzz", compute)


def record_shape(ctx) -> tuple[str, str]:
    """(shape, file suffix) of the data's records, so a class reads generated ones as its own."""
    data = getattr(ctx, "data", None)
    suffix = Path(data).suffix if data is not None else ".jsonl"
    shape = "messages"
    with contextlib.suppress(Exception):
        for rec in ctx.records():
            if rec.messages is not None:
                shape = rec.shape or "messages"
                break
    if shape == "prompt-completion" and data is not None and _lists_in_prompt(Path(data)):
        shape = "prompt-completion-turns"  # TRL's conversational prompt/completion
    return shape, suffix


def _lists_in_prompt(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as fh:
            if path.suffix == ".json":
                first = json.load(fh)[0]
            else:
                first = json.loads(next(line for line in fh if line.strip()))
        return isinstance(first.get("prompt"), list)
    except Exception:  # noqa: BLE001 - only a hint for the record shape
        return False


def validate(ctx) -> None:
    """`--fuzz` needs code that can be fed new conversations, and hypothesis (exit 2 if not)."""
    if ctx.fuzz < 0:
        raise InputError(f"--fuzz {ctx.fuzz}: must be a positive number of conversations")
    if ctx.user_dataset is None:
        raise InputError("--fuzz feeds generated conversations to your dataset code: give "
                         "--dataset too (dataset= in the Python API)")
    why_not = can_fuzz(ctx.user_dataset)
    if why_not:
        raise InputError(f"--fuzz: {why_not}")
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise InputError("--fuzz needs hypothesis: pip install 'loradoctor[fuzz]'") from None
