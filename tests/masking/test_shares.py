"""Shares merged in file order are one pass: the property `--workers` and `merge` rest on.

For any mix of samples (`fixtures/masking/mixed_samples.py`: correct, augmented, empty, fully
masked, partly supervised, prompt supervised), any cut of the records into contiguous shares
and any number of token views: comparing each share on its own (`masking.shares`, written to
a partial report's JSON and read back) and merging them gives exactly the `Comparison` and
`DataStats` of one pass of `compare.compare_dataset` over all of them, views included.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loradoctor.inputs.specs import load_spec
from loradoctor.inputs.records import normalise_record
from loradoctor.masking.compare import compare_dataset
from loradoctor.masking.oracle import Oracle
from loradoctor.masking.scan import DataStats
from loradoctor.masking.shares import Share, ViewLog, view_decoder
from loradoctor.masking.structure import StructureOracle
from loradoctor.inputs.user_dataset import UserData
from loradoctor.masking.workers import compare_in_shares
from loradoctor.shards import decode, encode

from ..conftest import FIXTURES
from .test_masking_counts import records as conversation_records

SPEC = f"{FIXTURES / 'masking' / 'mixed_samples.py'}:label"


@pytest.fixture(scope="module")
def kit(qwen3_tokenizer):
    oracle = Oracle(qwen3_tokenizer)
    user = UserData(load_spec(SPEC), SPEC, qwen3_tokenizer, None, None)
    return oracle, StructureOracle(oracle), user


def _through_json(share: Share, decode_view) -> Share:
    """A share as a partial report carries it: views decoded, written as JSON, read back."""
    def again(value):
        return decode(json.loads(json.dumps(encode(value))))
    comparison = dataclasses.replace(share.comparison, views={})  # the log holds them
    return Share(again(comparison), again(share.stats),
                 ViewLog.load(again(share.log.dump(decode_view))), again(share.variant_lines))


@given(data=st.data(), picked=st.lists(conversation_records(), min_size=1, max_size=24),
       show=st.integers(0, 3), chunk=st.integers(1, 9))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_cut_into_shares_merges_into_the_one_pass(kit, data, picked, show, chunk):
    oracle, structure, user = kit
    recs = [normalise_record(r, "mix.jsonl", i) for i, (_, r) in enumerate(picked, 1)]
    stats = DataStats()
    one = compare_dataset(user, recs, oracle, stats, [], show, structure=structure)

    cuts = sorted(data.draw(st.lists(st.integers(0, len(recs)), max_size=4)))
    bounds = [0, *cuts, len(recs)]
    decode_view = view_decoder(oracle.tokenizer)
    merged = None
    for a, b in zip(bounds, bounds[1:]):
        share = compare_in_shares(user, recs[a:b], oracle, [], show, structure, start=a,
                                  chunk_size=chunk)
        share = _through_json(share, decode_view)
        if merged is None:
            merged = share
        else:
            merged.merge(share)
    merged.finish(decode_view)
    assert merged.stats == stats
    assert merged.comparison == one
