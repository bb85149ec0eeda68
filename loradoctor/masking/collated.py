"""What the collator makes of the dataset's labels: the labels the model really gets.

A collator may keep the labels the dataset built, padding them with -100 (transformers'
`DataCollatorForSeq2Seq`, TRL's collator), or rebuild them (`DataCollatorForLanguageModeling`
copies `input_ids` into `labels`; a completion-only collator masks up to a response template).
The dataset's first items are collated in groups, as a DataLoader would, each collated row (of
a packed row: each sample) paired with the item it came from, the item's ids found in the row
(the collator may pad on either side or truncate), and the supervised positions compared:
masked tokens the collator trains (prompt, or the item's padding), supervised tokens it masks
(reply tokens, end-of-turn tokens). A collator that only moves every label one to the left is
recorded as a shift (LD106 names it). A collator that packs items into one row (or splits
packed items apart) is read end to end: the rows' tokens are the items' tokens in order. The
first position of an item or of a collated sample is not compared: a model that shifts labels
never scores it, and the packing collators mask it to keep packed samples apart. Items without labels of their own (TRL's, which hold a mask such as `assistant_masks`, or
nothing) are only counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..findings import TokenView
from ..inputs.rows import MASK_KEYS, Row, batch_rows, to_row
from ..inputs.user_dataset import IGNORE_INDEX, Item
from .sample_diff import decode
from .scan import Lines

MAX_ITEMS = 256  # dataset items collated (the collator's behaviour, not the whole dataset)
GROUP = 8  # items per collated batch
VIEW_BEFORE, VIEW_TOKENS = 16, 96


@dataclass
class CollatorChanges:
    """The dataset's labels against the collator's, over the items collated."""

    collator: str
    items: int = 0  # dataset items collated
    compared: int = 0  # paired with their collated row, ids found in it, labels their own
    unlabelled: int = 0  # items without labels of their own (TRL's masks, or none)
    unpaired: Lines = field(default_factory=Lines)  # no collated row told apart for the item
    first_unpaired: str | None = None
    changed: Lines = field(default_factory=Lines)  # items whose supervised tokens changed
    first_changed: str | None = None  # where the first of them is
    prompt_trained: int = 0  # tokens the dataset masked, the collator trains
    padding_trained: int = 0  # the item's padding (attention 0), now trained
    reply_masked: int = 0  # tokens the dataset supervised, the collator masks
    eot_masked: int = 0  # of those, end-of-turn tokens
    shifted: Lines = field(default_factory=Lines)  # every label moved one to the left
    view: TokenView | None = None

    @property
    def trained(self) -> int:
        return self.prompt_trained + self.padding_trained

    @property
    def masked(self) -> int:
        return self.reply_masked + self.eot_masked


def compare_collated(collator, items: list[tuple[int, str, Any]], tokenizer,
                     end_of_turn_id: int | None, group: int = GROUP) -> CollatorChanges:
    """Collate `items` (line, location, raw item) in groups with `collator` (a
    `UserCollator`) and compare each collated row with the item it came from."""
    out = CollatorChanges(collator.name)
    for k in range(0, len(items), group):
        chunk = items[k:k + group]
        out.items += len(chunk)
        sources = [to_row(raw, line, location) for line, location, raw in chunk]
        if not any(_own_labels(row) for row in sources):
            out.unlabelled += len(chunk)  # nothing of the dataset's own to compare
            continue
        where = f"{chunk[0][1]}" if len(chunk) == 1 else f"{chunk[0][1]} .. {chunk[-1][1]}"
        rows = collated_rows(collator([raw for _, _, raw in chunk], where))
        pairs = [(source, row.item, {0}) for source, row in zip(sources, rows)] \
            if len(rows) == len(chunk) else regrouped(sources, rows)
        if pairs is None:
            for line, _, _ in chunk:
                out.unpaired.add(line)
            out.first_unpaired = out.first_unpaired or (
                f"{where}: {len(chunk)} items collated into {len(rows)} rows")
            continue
        for source, made, skip in pairs:
            _compare(out, source, made, skip, tokenizer, end_of_turn_id)
    return out


def regrouped(sources: list[Row], rows: list[Row]) -> list[tuple[Row, Item, set]] | None:
    """Collated rows that pack the items together (or split packed items apart): the rows'
    tokens end to end are the items' tokens in order. Each item gets its stretch of the
    collated labels, and the positions where a collated sample starts are not compared (a
    model that shifts never scores a sample's first label). None: the tokens differ."""
    ids, labels, starts = [], [], set()
    for row in rows:
        starts.add(len(ids))
        ids += row.item.ids
        labels += row.item.labels
    out, at = [], 0
    for source in sources:
        if source.item is None:
            return None
        n = _content_length(source.item.attention, len(source.item.ids))
        if ids[at:at + n] != source.item.ids[:n]:
            return None
        skip = {0} | {t - at for t in starts if at <= t < at + n}
        out.append((source, Item(ids[at:at + n], labels[at:at + n]), skip))
        at += n
    return out if at == len(ids) else None


def collated_rows(batch: Any) -> list[Row]:
    """The rows (a packed row: its samples) of one collated batch; a batch that is a tuple of
    tensors (`default_collate` over `(input_ids, labels, ...)` items) is read row by row."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and hasattr(batch[0], "tolist"):
        columns = [c.tolist() for c in batch if hasattr(c, "tolist")]
        return [to_row(tuple(c[r] for c in columns), r + 1, f"row {r}")
                for r in range(len(columns[0]))]
    return [row for row in batch_rows([batch]) if row.item is not None]


def _compare(out: CollatorChanges, source: Row, made: Item | None, skip: set[int], tokenizer,
             end_of_turn_id: int | None) -> None:
    """One item against its collated row; the positions in `skip` (a sample's first) are
    not compared."""
    item = source.item
    if not _own_labels(source):
        out.unlabelled += 1
        return
    if made is None:
        _unpaired(out, source, "its collated row holds no input_ids and labels")
        return
    found = find_offset(item.ids, item.attention, made.ids)
    if found is None:
        _unpaired(out, source, "its input_ids are not in the collated row")
        return
    offset, span = found
    out.compared += 1
    src = [y if y >= 0 else IGNORE_INDEX for y in item.labels[:span]]
    got = [y if y >= 0 else IGNORE_INDEX for y in made.labels[offset:offset + span]]
    if len(got) < len(src) or src == got:
        return
    if src[1:] == got[:-1]:  # every label one to the left: a shift by hand (LD106's)
        out.shifted.add(source.line)
        return
    counts = {"prompt": 0, "padding": 0, "reply": 0, "eot": 0}
    first = None
    for t in range(span):
        if t in skip:
            continue
        kind = _change(src[t], got[t], item.ids[t], item.attention, t, end_of_turn_id)
        if kind is not None:
            counts[kind] += 1
            first = t if first is None else first
    if first is None:
        return
    out.changed.add(source.line)
    out.first_changed = out.first_changed or source.location
    out.prompt_trained += counts["prompt"]
    out.padding_trained += counts["padding"]
    out.reply_masked += counts["reply"]
    out.eot_masked += counts["eot"]
    if out.view is None:
        content = _content_length(item.attention, span)
        shown = src[:content] if first < content else src  # the item's padding left out
        out.view = _view(out.collator, source.location, made.ids, offset, shown, got, first,
                         tokenizer)


def _own_labels(row: Row) -> bool:
    """The item holds labels the dataset wrote (not made here from TRL's mask)."""
    return row.item is not None and row.item.mask_from not in MASK_KEYS


def _change(was: int, now: int, token: int, attention: list[int] | None, t: int,
            end_of_turn_id: int | None) -> str | None:
    """How position t changed: `prompt`/`padding` (masked, now trained), `reply`/`eot`
    (supervised, now masked), or None."""
    if was == IGNORE_INDEX and now != IGNORE_INDEX:
        padding = attention is not None and t < len(attention) and not attention[t]
        return "padding" if padding else "prompt"
    if was != IGNORE_INDEX and now == IGNORE_INDEX:
        return "eot" if end_of_turn_id is not None and token == end_of_turn_id else "reply"
    return None


def _content_length(attention: list[int] | None, span: int) -> int:
    """The item's tokens before its own padding (all of them without an attention mask)."""
    if attention is None or 0 not in attention[:span]:
        return span
    return max((t + 1 for t, a in enumerate(attention[:span]) if a), default=span)


def _unpaired(out: CollatorChanges, source: Row, why: str) -> None:
    out.unpaired.add(source.line)
    out.first_unpaired = out.first_unpaired or f"{source.location}: {why}"


def find_offset(ids: list[int], attention: list[int] | None,
                row: list[int]) -> tuple[int, int] | None:
    """Where the item's tokens start in the collated row, and how many are there: the whole
    item, or its content without its own padding (the collator may pad it again, on either
    side), or its first tokens (the collator truncated it). None: not in the row."""
    content = _content_length(attention, len(ids))
    for span in dict.fromkeys((len(ids), content)):
        if span == 0:
            continue
        for offset in dict.fromkeys((0, len(row) - span)):
            if 0 <= offset and row[offset:offset + span] == ids[:span]:
                return offset, span
    if 0 < len(row) < content and row == ids[:len(row)]:
        return 0, len(row)
    head = ids[:content]
    for offset in range(1, len(row) - content + 1):
        if row[offset:offset + content] == head:
            return offset, content
    return None


def _view(collator: str, location: str, row_ids: list[int], offset: int, src: list[int],
          got: list[int], first: int, tokenizer) -> TokenView:
    """The collated row around the first change: what the model gets against the dataset's
    labels (drawn as the truth)."""
    lo = max(0, first - VIEW_BEFORE)
    hi = min(len(src), lo + VIEW_TOKENS)
    ids = row_ids[offset + lo:offset + hi]
    tokens = [decode(tokenizer, [i]) if tokenizer is not None else str(i) for i in ids]
    return TokenView(f"{location} as {collator} collates it  tokens {lo}-{hi} of {len(got)}",
                     tokens, [y != IGNORE_INDEX for y in got[lo:hi]],
                     [y != IGNORE_INDEX for y in src[lo:hi]])


def collated(ctx) -> CollatorChanges | None:
    """The run's collator against its dataset's labels (once per run); None: no collator."""
    if ctx.collator is None:
        return None

    def compute() -> CollatorChanges:
        from .analysis import oracle
        tokenizer = ctx.tokenizer
        eot = oracle(ctx).facts.end_of_turn_id if tokenizer is not None else None
        return compare_collated(ctx.collator, ctx.collator_items(MAX_ITEMS), tokenizer, eot)
    return ctx.memo("masking.collated", compute)
