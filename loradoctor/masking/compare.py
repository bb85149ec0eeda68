"""The user's `(input_ids, labels)` against the oracle, sample by sample.

Per sample: read every negative label as masked (the value recorded: -100 for transformers'
loss, -1 for nanoGPT's, LD117), undo a hand-made shift of the labels (and record it, or that
there is none: LD106, LD116; `alignment.effective_labels`), then judge the labels against the
record's rendering, or against the sample's own tokens' turns (`sample_diff.SampleJudge`:
padding dropped, the ids aligned with the template's allowing a doubled BOS, an added BOS, a
missing preamble, left or right padding, right truncation, and every disagreement classified
by what the oracle says the token is). The aggregate keeps counts, the first `MAX_LINES` line
numbers per kind, and token views for the first `show` samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from ..errors import InputError
from ..findings import TokenView
from ..inputs.user_dataset import IGNORE_INDEX, Item, UserData
from .alignment import effective_labels, labels_aligned
from .markers import Marker, marker_counts
from .oracle import OracleSample, Truth
from .scan import DataStats, Lines
from .structure import StructureOracle
from .sample_diff import SampleDiff, SampleJudge, decode
from .template import TemplateFacts

VIEW_BEFORE, VIEW_TOKENS = 24, 96  # token view window around the first disagreement
MAX_VARIANT_ROWS = 200  # token rows rendered again to say which template variant they follow
MAX_ROW_PROBLEMS = 1000  # unreadable rows kept with their reason; every one is counted


@dataclass
class Comparison:
    """The user's dataset against the oracle, aggregated over every sample."""

    samples: int = 0
    compared: int = 0  # aligned with the template's ids, masks compared
    by_tokens: int = 0  # of those, judged against their own tokens' structure (structure.py)
    unexplained: Lines = field(default_factory=Lines)  # rows no template structure explains
    cut_in_turn: Lines = field(default_factory=Lines)  # rows that end inside an assistant turn
    bad_rows: Lines = field(default_factory=Lines)  # token rows without input_ids and labels
    variant_checked: int = 0  # rows rendered again with the tokenizer's own template
    variant_rows: Lines = field(default_factory=Lines)  # rows that follow a variant of it
    first_variant: str | None = None
    row_problems: list[tuple[int, str, str]] = field(default_factory=list)
    locations: dict[int, str] = field(default_factory=dict)  # line -> where, for rows kept
    compared_supervising: int = 0  # of those, the samples that supervise at least one token
    no_supervised: Lines = field(default_factory=Lines)
    prompt_supervised: Lines = field(default_factory=Lines)
    prompt_categories: Counter = field(default_factory=Counter)
    separator_supervised: Lines = field(default_factory=Lines)
    padding_supervised: Lines = field(default_factory=Lines)
    unsupervised_assistant: Lines = field(default_factory=Lines)
    missing_turns: int = 0
    partial_turns: int = 0
    tail_samples: int = 0
    missing_tokens: int = 0
    assistant_tokens: int = 0  # in samples that supervise something (LD101's are apart)
    eot_unsupervised: Lines = field(default_factory=Lines)
    # Samples that leave out the empty think block the template writes on its own (Qwen3's
    # last turn, MiniMind's every turn): supervised or not, both are right; said, not flagged.
    inserted_unsupervised: Lines = field(default_factory=Lines)
    eot_as_pad: Lines = field(default_factory=Lines)
    eot_total: int = 0
    eot_missing: int = 0
    eot_missing_as_pad: int = 0
    shifted: Lines = field(default_factory=Lines)
    unshifted: Lines = field(default_factory=Lines)  # supervising, labels aligned with input_ids
    mask_values: dict[int, Lines] = field(default_factory=dict)  # negative label -> samples
    truncated_all: Lines = field(default_factory=Lines)
    truncated_part: Lines = field(default_factory=Lines)
    cut_tokens: int = 0
    double_bos: Lines = field(default_factory=Lines)
    ids_differ: Lines = field(default_factory=Lines)
    first_differ: str | None = None
    straddle_missing: Lines = field(default_factory=Lines)
    marker_miss: dict[str, Lines] = field(default_factory=dict)
    marker_counts: dict[str, list[int]] = field(default_factory=dict)  # text vs token matches
    unrendered: int = 0  # samples whose record the template cannot render
    n_items: int | None = None
    n_records: int = 0
    user_max_length: int | None = None
    views: dict[str, list[TokenView]] = field(default_factory=dict)


class Comparer:
    """Compares one sample at a time and aggregates; views go to the first `show` failures."""

    def __init__(self, facts: TemplateFacts, user: UserData | None, markers: list[Marker],
                 tokenizer, show: int, structure: StructureOracle | None = None):
        self.facts = facts
        self.user = user
        # Judges samples against their own tokens when there is no record (pre-tokenized rows,
        # a trainer's batches) or when their ids differ from the record's rendering (data
        # augmentation): every sample's labels are checked either way.
        self.structure = structure
        self.markers = [m for m in markers if m.ids]
        self.tokenizer = tokenizer
        self.show = show
        user_tokenizer = user.tokenizer if user is not None else tokenizer
        self.pad_id = getattr(user_tokenizer, "pad_token_id", None)
        self.bos_id = getattr(user_tokenizer, "bos_token_id", None)
        self.judge = SampleJudge(facts, tokenizer, self.pad_id, self.bos_id)
        self.result = Comparison(user_max_length=user.max_length if user is not None else None)
        self._shown: set[int] = set()  # lines already shown in a view: each sample once
        for m in self.markers:
            self.result.marker_counts[m.attribute] = [0, 0]

    # --- one sample ----------------------------------------------------------------------

    def add(self, line: int, location: str, item: Item,
            sample: OracleSample | Truth | None = None) -> None:
        """Compare one sample: with `sample` (the record's rendering), or without it against its
        own tokens."""
        res = self.result
        res.samples += 1
        item = self._read_masks(line, item)
        diff = self._new_diff(line, location, item)
        if diff.n_supervised == 0:
            res.no_supervised.add(line)
        label_mask = [y != IGNORE_INDEX for y in item.labels][:len(item.ids)]
        self._raw = label_mask + [False] * (len(item.ids) - len(label_mask))
        self._current = (item.ids, self._raw, None)
        if isinstance(sample, Truth):
            res.unrendered += 1
            if diff.n_supervised == 0:
                self._view("LD101", diff)
            return
        eff = effective_labels(item)
        if eff is None:
            diff.differ = (f"labels have {len(item.labels)} entries for {len(item.ids)} "
                           f"input_ids")
            self._record_differ(diff)
            if diff.n_supervised == 0:
                self._view("LD101", diff)
            return
        ids, mask, shifted = eff
        diff.shifted = shifted
        diff.labels_aligned = not shifted and labels_aligned(item)
        self._current = (ids, mask, None)
        if sample is None and self.structure is None:  # labels alone: no truth to judge by
            res.shifted.add_if(shifted, line)
            res.unshifted.add_if(diff.labels_aligned, line)
            if diff.n_supervised == 0:
                self._view("LD101", diff)
            return
        if sample is not None:
            self._judge(diff, ids, mask, item.attention, sample)
            if diff.aligned or self.structure is None:
                self._aggregate(diff, sample)
                return
            # The ids are not the record's rendering (augmented, tokenized another way): say so
            # (LD110), then judge the labels against the structure of the sample's own tokens.
            self._record_differ(diff)
            diff = self._new_diff(line, location, item)
            diff.shifted = shifted
            diff.labels_aligned = not shifted and labels_aligned(item)
        own = self.structure.sample(self._content(ids, item.attention))
        if isinstance(own, Truth):
            res.unexplained.add(line)
            if res.first_differ is None:
                res.first_differ = f"{location}: {own.error}"
            if diff.n_supervised == 0:
                self._view("LD101", diff)
            return
        res.by_tokens += 1
        if sample is None and res.variant_checked < MAX_VARIANT_ROWS:
            res.variant_checked += 1
            variant = self.structure.variant(own)
            if not variant.same:
                res.variant_rows.add(line)
                res.first_variant = res.first_variant or f"{location}: {variant.where}"
        self._judge(diff, ids, mask, item.attention, own)
        bos = self.bos_id
        diff.double_bos = diff.double_bos or (bos is not None and own.ids[:2] == [bos, bos])
        turns = own.truth.turns
        diff.cut_in_turn = bool(turns) and turns[-1].eot_start is None \
            and self.facts.end_of_turn is not None
        self._aggregate(diff, own)

    def _read_masks(self, line: int, item: Item) -> Item:
        """Every negative label marks a position that is not supervised (-100, nanoGPT's -1):
        each value is recorded with the samples that use it (LD117 holds it against the
        model's loss), then read as -100, the marker the comparison works with. Labels made
        here from a mask (MiniMind's loss_mask, TRL's assistant_masks) are not the user's."""
        marks = {y for y in item.labels if y < 0}
        if not marks:
            return item
        if item.mask_from is None:
            for value in sorted(marks):
                self.result.mask_values.setdefault(value, Lines()).add(line)
        if marks == {IGNORE_INDEX}:
            return item
        return replace(item, labels=[IGNORE_INDEX if y < 0 else y for y in item.labels])

    def _new_diff(self, line: int, location: str, item: Item) -> SampleDiff:
        return SampleDiff(line, location, n_user=len(item.ids),
                          n_supervised=sum(1 for y in item.labels if y != IGNORE_INDEX))

    def _content(self, ids: list[int], attention: list[int] | None) -> list[int]:
        """The sample's tokens without padding (by the attention mask, else by the pad id)."""
        if attention is not None and 0 in attention:
            return [t for k, t in enumerate(ids) if k >= len(attention) or attention[k]]
        pad = self.pad_id
        if pad is None:
            return list(ids)
        lo, hi = 0, len(ids)
        while lo < hi and ids[lo] == pad:
            lo += 1
        while hi > lo and ids[hi - 1] == pad:
            hi -= 1
        if hi < len(ids) and pad == self.facts.end_of_turn_id:
            hi += 1  # pad == end-of-turn: the first of the run closes the last turn
        return list(ids[lo:hi])

    def _judge(self, diff: SampleDiff, ids: list[int], mask: list[bool],
               attention: list[int] | None, sample: OracleSample) -> None:
        oracle_mask = self.judge.judge(diff, ids, mask, attention, sample)
        if oracle_mask is not None:  # the view shows the truth where the ids align
            self._current = (ids, mask, oracle_mask)

    def _aggregate(self, diff: SampleDiff, sample: OracleSample) -> None:
        """Add one sample's differences to the run's counts, and its token views."""
        res = self.result
        line = diff.line
        if diff.shifted:
            res.shifted.add(line)
        elif diff.labels_aligned:
            res.unshifted.add(line)
        res.double_bos.add_if(diff.double_bos, line)
        if diff.differ:
            self._record_differ(diff)
        for m in self.markers:
            text_n, token_n = marker_counts(m, sample)
            counts = res.marker_counts[m.attribute]
            counts[0] += text_n
            counts[1] += token_n
            if text_n > token_n and diff.missing_turns:  # missed, and turns went unsupervised
                res.marker_miss.setdefault(m.attribute, Lines()).add(line)
        if not diff.aligned:
            if diff.n_supervised == 0:
                self._view("LD101", diff)
            return
        self._aggregate_compared(diff)

    def _aggregate_compared(self, diff: SampleDiff) -> None:
        """The counts of a sample whose ids align with the template's: its labels compared."""
        res = self.result
        line = diff.line
        res.compared += 1
        supervised = diff.n_supervised > 0
        if supervised:
            res.compared_supervising += 1
            res.assistant_tokens += diff.assistant_total - diff.cut
        if not supervised:
            self._view("LD101", diff)
        prompt = {k: v for k, v in diff.extra.items() if k not in ("separator", "padding")}
        if prompt:
            res.prompt_supervised.add(line)
            res.prompt_categories.update(prompt)
            self._view("LD103", diff)
        elif diff.extra.get("separator"):
            res.separator_supervised.add(line)
        if diff.extra.get("padding"):
            res.padding_supervised.add(line)
            res.prompt_categories["padding"] += diff.extra["padding"]
        if supervised and diff.missing_tokens:
            res.unsupervised_assistant.add(line)
            res.missing_turns += diff.missing_turns
            res.partial_turns += diff.partial_turns
            res.missing_tokens += diff.missing_tokens
            res.tail_samples += diff.tail
            if diff.straddle_missing:
                res.straddle_missing.add(line)
            self._view("LD104", diff)
        if supervised and diff.inserted_supervised < diff.inserted_total:
            res.inserted_unsupervised.add(line)
        if supervised:
            res.eot_total += diff.eot_total
            res.eot_missing += diff.eot_missing
            if diff.eot_missing:
                if diff.eot_as_pad:
                    res.eot_as_pad.add(line)
                    res.eot_missing_as_pad += diff.eot_missing
                    self._view("LD108", diff)
                else:
                    res.eot_unsupervised.add(line)
                    self._view("LD105", diff)
        if diff.shifted:
            self._view("LD106", diff)
        if diff.cut_in_turn:
            res.cut_in_turn.add(line)
            self._view("LD107", diff)
        if diff.cut:
            res.cut_tokens += diff.cut
            if diff.cut >= diff.assistant_total:
                res.truncated_all.add(line)
            else:
                res.truncated_part.add(line)
            self._view("LD107", diff)

    def _record_differ(self, diff: SampleDiff) -> None:
        self.result.ids_differ.add(diff.line)
        if self.result.first_differ is None:
            self.result.first_differ = f"{diff.location}: {diff.differ}"

    # --- token views --------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:  # labels alone: the view shows token ids
            return " ".join(map(str, ids))
        return decode(self.tokenizer, ids)

    def _view(self, key: str, diff: SampleDiff) -> None:
        """A token view of the current sample for rule `key` (the first `show` per rule)."""
        views = self.result.views.setdefault(key, [])
        if len(views) >= self.show or diff.line in self._shown:
            return
        self._shown.add(diff.line)
        item_ids, mask, oracle_mask = self._current
        if key == "LD106":  # show the labels as the user wrote them, against the truth
            mask = self._raw + [False] * (len(item_ids) - len(self._raw))
        lo = max(0, (diff.focus or 0) - VIEW_BEFORE)
        if key == "LD107":  # the cut is at the end
            lo = max(0, len(item_ids) - VIEW_TOKENS)
        hi = min(len(item_ids), lo + VIEW_TOKENS)
        tokens = [self._decode([i]) for i in item_ids[lo:hi]]
        title = f"{diff.location}  tokens {lo}-{hi} of {len(item_ids)}"
        views.append(TokenView(title, tokens, mask[lo:hi],
                               oracle_mask[lo:hi] if oracle_mask is not None else None))


def compare_dataset(user: UserData, records, oracle, stats: DataStats, markers: list[Marker],
                    show: int, advance=lambda n=1: None,
                    structure: StructureOracle | None = None) -> Comparison:
    """Ask the user's code for every sample and compare it with the oracle (streamed)."""
    comparer = Comparer(oracle.facts, user, markers, oracle.tokenizer, show, structure)
    res = comparer.result
    n_items = len(user) if user.kind == "class" else None
    res.n_items = n_items
    index = 0
    for rec in records:
        res.n_records += 1
        if (n_items is not None and index >= n_items) or rec.messages is None:
            index += 1  # unreadable records keep their place: item i is the file's record i
            continue
        sample = oracle.sample(rec.messages)
        stats.add(rec.line, sample, None)
        item = user.item(index, rec.messages, rec.location)
        comparer.add(rec.line, rec.location, item, sample)
        index += 1
        advance(1)
    return res


def feed_rows(comparer: Comparer, rows, advance=lambda n=1: None) -> None:
    """Give every token row to `comparer`; an unreadable row is counted with its reason."""
    res = comparer.result
    for row in rows:
        res.n_records += 1
        if row.item is None:
            res.bad_rows.add(row.line)
            if len(res.row_problems) < MAX_ROW_PROBLEMS:
                res.row_problems.append((row.line, row.location, row.problem))
        else:
            comparer.add(row.line, row.location, row.item)
        if len(res.locations) < MAX_ROW_PROBLEMS:  # "batch 0 row 1", "dataset[7]"
            res.locations[row.line] = row.row_location or row.location
        advance(1)


def compare_rows(rows, structure: StructureOracle, show: int, advance=lambda n=1: None,
                 user: UserData | None = None, markers: list[Marker] = ()) -> Comparison:
    """Compare token rows (`rows.Row`, streamed) with their own structure."""
    oracle = structure.oracle
    comparer = Comparer(oracle.facts, user, list(markers), oracle.tokenizer, show, structure)
    return _fed(comparer, rows, advance)


def compare_labels(rows, show: int, advance=lambda n=1: None) -> Comparison:
    """Token rows without a tokenizer: what the labels alone show (no supervised token, labels
    shifted by hand, the mask values), without a template's truth to compare them with."""
    return _fed(Comparer(None, None, [], None, show), rows, advance)


def _fed(comparer: Comparer, rows, advance) -> Comparison:
    feed_rows(comparer, rows, advance)
    res = comparer.result
    if res.bad_rows and not res.samples:
        line, location, problem = res.row_problems[0]
        raise InputError(f"{location}: {problem} (and no row holds input_ids and labels)")
    return res
