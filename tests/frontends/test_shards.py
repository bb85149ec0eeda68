"""check-dataset at scale: `--workers N` with the user's dataset code, `--shard I/N` and `merge`.

The data are thousands of tagged conversations (`fixtures/masking/mixed_records.py`) labelled
by a dataset class that reads its whole file at construction (`fixtures/masking/
table_dataset.py`), so that every masking rule has samples to count, with a few lines that are
not JSON. The claim under test is exactness: N workers, or N shards merged, give the report one
run in one process gives, the same findings, counts, line numbers and token views.
"""

from __future__ import annotations

import json
import sys

import pytest

from ..conftest import FIXTURES
from ..helpers import comparable

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

MASKING = FIXTURES / "masking"
CLASS = f"{MASKING / 'table_dataset.py'}:MixedDataset"
FUNCTION = f"{MASKING / 'mixed_samples.py'}:label"
N_RECORDS = 3000


def _kit():
    sys.path.insert(0, str(MASKING))
    try:
        import mixed_records
    finally:
        sys.path.remove(str(MASKING))
    return mixed_records


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """3,000 tagged conversations, about 1% broken lines and a few blank ones."""
    path = tmp_path_factory.mktemp("scale") / "mixed.jsonl"
    return _kit().write_jsonl(path, N_RECORDS, seed=7)


def run_json(cli, *args) -> tuple[int, dict]:
    result = cli(*map(str, args), "--json")
    assert result.code in (0, 1), result.err
    report = comparable(result.out)
    assert not [c for c in report["checks"] if c["status"] == "crash"], report["findings"]
    return result.code, report


def shards(cli, tmp_path, n, *args) -> list:
    """Run `check-dataset ... --shard i/n --json` for every i; the partial reports' paths."""
    paths = []
    for i in range(1, n + 1):
        result = cli(*map(str, args), "--shard", f"{i}/{n}", "--json")
        assert result.code in (0, 1), result.err
        path = tmp_path / f"part-{i}.json"
        path.write_text(result.out, encoding="utf-8")
        paths.append(path)
    return paths


# --- the done-when: three shards merged are the whole run -----------------------------------


@pytest.mark.slow  # the 3,000-record file, checked whole and in parts
def test_three_shards_merged_give_exactly_the_whole_runs_report(cli, qwen3_tokenizer_dir,
                                                               big_file, tmp_path):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--dataset", CLASS,
            "--max-length", 48]
    code, whole = run_json(cli, *args)
    parts = shards(cli, tmp_path, 3, *args)
    merged = cli("merge", *reversed(parts), "--json")  # any order: merged in shard order
    assert merged.code == code == 1, merged.err
    assert comparable(merged.out) == whole
    codes = {f["code"] for f in whole["findings"]}
    assert {"LD100", "LD101", "LD103", "LD104", "LD105", "LD107", "LD110"} <= codes
    assert whole["summary"]["masking"]["samples"] > 2900  # every readable record compared
    ld101 = next(f for f in whole["findings"] if f["code"] == "LD101")
    assert ld101["evidence"]["count"] > 300 and ld101["location"] == f"{big_file}:" \
        f"{ld101['evidence']['lines'][0]}"


@pytest.mark.slow  # the 3,000-record file, checked whole and in parts
def test_each_partial_report_covers_its_own_contiguous_share(cli, qwen3_tokenizer_dir,
                                                            big_file, tmp_path):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--dataset", CLASS,
            "--select", "LD100,LD101"]
    reports = [json.loads(p.read_text()) for p in shards(cli, tmp_path, 3, *args)]
    ranges = [r["partial"]["records"] for r in reports]
    total = ranges[-1][1]
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(abs((b - a) - total / 3) <= 1 for a, b in ranges)
    assert sum(r["summary"]["records"] for r in reports) == total
    lines = [r["summary"]["masking"]["samples"] for r in reports]
    assert all(n > 900 for n in lines)
    # A shard's findings are its own records', with the file's line numbers.
    first_lines = [next(f for f in r["findings"] if f["code"] == "LD101")["evidence"]["lines"][0]
                   for r in reports]
    assert first_lines == sorted(first_lines) and first_lines[2] > 2000


@pytest.mark.slow  # the 3,000-record file, checked whole and in parts
def test_the_merged_text_report_shows_the_same_token_views(cli, qwen3_tokenizer_dir, big_file,
                                                          tmp_path):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--dataset",
            FUNCTION, "--show", "2"]
    whole = cli(*map(str, args)).out
    parts = shards(cli, tmp_path, 4, *args)
    merged = cli("merge", *parts).out
    header = " ".join(merged.split("LD100")[0].split())  # the title, however it wraps
    assert "merged from 4 shards" in header
    body = lambda text: text[text.index(" ✓ LD100") if " ✓ LD100" in text  # noqa: E731
                             else text.index(" ✗ LD100"):]
    assert body(merged) == body(whole)
    assert whole.count(" tokens 0-") + whole.count(" tokens ") >= 6


@pytest.mark.slow  # the 3,000-record file, checked whole and in parts
def test_shards_of_the_oracle_alone_and_of_token_rows_merge_too(cli, qwen3_tokenizer_dir,
                                                               big_file, tmp_path):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--max-length", 40]
    _, whole = run_json(cli, *args)
    merged = cli("merge", *shards(cli, tmp_path, 3, *args), "--json")
    assert comparable(merged.out) == whole

    rows_kit = _rows_kit()
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    recs = _kit().records(400, seed=3)
    rows = [rows_kit.correct(tok, r["messages"]) for r in recs]
    for k in range(0, 400, 37):
        rows[k] = rows_kit.prompt_supervised(rows[k])
    for k in range(5, 400, 53):
        rows[k] = rows_kit.nothing_supervised(rows[k])
    path = rows_kit.write_jsonl(tmp_path / "rows.jsonl", rows, None)
    args = ["check-dataset", path, "--tokenizer", qwen3_tokenizer_dir, "--tokenized"]
    _, whole = run_json(cli, *args)
    sub = tmp_path / "rows"
    sub.mkdir()
    merged = cli("merge", *shards(cli, sub, 3, *args), "--json")
    assert comparable(merged.out) == whole
    assert {f["code"] for f in whole["findings"]} >= {"LD101", "LD103"}


def _rows_kit():
    from loradoctor.inputs.specs import load_spec
    return sys.modules[load_spec(f"{MASKING / 'token_rows.py'}:write_jsonl").__module__]


def one_bad_record_in_three_shards(cli, qwen3_tokenizer_dir, tmp_path):
    """90 records, only the last one wrong, checked in 3 shards: (data, partial paths, codes)."""
    recs = _kit().records(90, seed=1)
    for r in recs:  # clean everywhere ...
        first = next(m for m in r["messages"] if m["role"] == "user")
        first["content"] = "[match]" + first["content"].partition("]")[2]
    last = next(m for m in recs[-1]["messages"] if m["role"] == "user")
    last["content"] = "[masked] only the last record is wrong"  # ... but in the last shard
    data = tmp_path / "one_bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    args = ["check-dataset", data, "--tokenizer", qwen3_tokenizer_dir, "--dataset", FUNCTION]
    codes = []
    for i in (1, 2, 3):
        result = cli(*map(str, args), "--shard", f"{i}/3", "--json")
        codes.append(result.code)
        (tmp_path / f"p{i}.json").write_text(result.out)
    return data, [tmp_path / f"p{i}.json" for i in (1, 2, 3)], codes


def test_the_merged_exit_code_follows_the_merged_findings(cli, qwen3_tokenizer_dir, tmp_path):
    data, parts, codes = one_bad_record_in_three_shards(cli, qwen3_tokenizer_dir, tmp_path)
    assert codes == [0, 0, 1]
    merged = cli("merge", *parts, "--json")
    assert merged.code == 1
    (ld101,) = [f for f in json.loads(merged.out)["findings"] if f["code"] == "LD101"]
    assert ld101["evidence"]["lines"] == [90] and ld101["location"] == f"{data}:90"


@pytest.mark.slow  # a separate process: a torch import of its own
def test_merge_exits_1_with_the_report_alone_on_stdout_through_the_real_process(
        cli, cli_subprocess, qwen3_tokenizer_dir, tmp_path):
    _, parts, _ = one_bad_record_in_three_shards(cli, qwen3_tokenizer_dir, tmp_path)
    merged = cli_subprocess("merge", *parts, "--json")
    assert merged.code == 1, merged.err
    assert comparable(merged.out) == comparable(cli("merge", *parts, "--json").out)


# --- --workers N with the user's code --------------------------------------------------------


@pytest.mark.slow  # the 3,000-record file, in one process and in two worker processes
@pytest.mark.parametrize("spec", [CLASS, FUNCTION], ids=["class", "function"])
def test_two_workers_give_the_same_json_report_as_one(cli, qwen3_tokenizer_dir, big_file, spec):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--dataset", spec,
            "--max-length", 48]
    one = run_json(cli, *args, "--workers", 1)
    two = run_json(cli, *args, "--workers", 2)
    assert one == two and one[0] == 1


@pytest.mark.slow  # the 3,000-record file, in one process and in two worker processes
def test_two_workers_show_the_same_token_views(cli, qwen3_tokenizer_dir, big_file):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--dataset", CLASS]
    assert cli(*map(str, args), "--workers", "2").out == cli(*map(str, args)).out


def test_a_workers_dataset_code_that_raises_is_the_same_input_error(cli, qwen3_tokenizer_dir,
                                                                   tmp_path):
    data = tmp_path / "bad.jsonl"
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    recs = [{"messages": turn}] * 600
    recs[450] = {"messages": [{"role": "system", "content": "be brief"}, *turn]}
    data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    spec = f"{FIXTURES / 'masking' / 'bad_specs.py'}:crashes_on_a_record"  # raises on 3 turns
    one = cli("check-dataset", str(data), "--tokenizer", str(qwen3_tokenizer_dir),
              "--dataset", spec)
    two = cli("check-dataset", str(data), "--tokenizer", str(qwen3_tokenizer_dir),
              "--dataset", spec, "--workers", "2")
    assert one.code == two.code == 2 and one.err == two.err and "raised KeyError" in one.err
    assert f"{data}:451" in one.err


# --- input errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("shard,needle", [
    ("0/3", "shards count from 1, so a 0-based array index is --shard $((I+1))/3"),
    ("4/3", "I must be between 1 and N"),
    ("two", "expected I/N"),
])
def test_a_shard_that_is_not_one_of_n_is_a_usage_error(cli, qwen3_tokenizer_dir, big_file,
                                                       shard, needle):
    result = cli("check-dataset", str(big_file), "--tokenizer", str(qwen3_tokenizer_dir),
                 "--shard", shard)
    assert result.code == 2 and needle in result.err and "Traceback" not in result.err


def test_fuzz_is_not_split_across_shards(cli, qwen3_tokenizer_dir, big_file):
    result = cli("check-dataset", str(big_file), "--tokenizer", str(qwen3_tokenizer_dir),
                 "--dataset", FUNCTION, "--fuzz", "5", "--shard", "1/2")
    assert result.code == 2 and "run --fuzz once, without --shard" in result.err


def test_merge_refuses_partials_that_are_not_one_whole_run(cli, qwen3_tokenizer_dir, big_file,
                                                          tmp_path):
    args = ["check-dataset", big_file, "--tokenizer", qwen3_tokenizer_dir, "--select", "LD100"]
    parts = shards(cli, tmp_path, 3, *args)
    missing = cli("merge", parts[0], parts[2])
    assert missing.code == 2 and "shard 2/3 missing (2 of 3 given)" in missing.err
    twice = cli("merge", parts[0], parts[1], parts[1], parts[2])
    assert twice.code == 2 and "shard 2/3 is also" in twice.err
    other = tmp_path / "other"
    other.mkdir()
    (odd,) = [p for p in shards(cli, other, 3, *args, "--max-length", 9) if p.name == "part-2.json"]
    mixed = cli("merge", parts[0], odd, parts[2])
    assert mixed.code == 2 and "max_length is 9, but None" in mixed.err
    whole = tmp_path / "whole.json"
    whole.write_text(cli(*map(str, args), "--json").out)
    assert "not a partial report" in cli("merge", whole).err
    assert "cannot be read" in cli("merge", tmp_path / "nope.json").err


def test_shards_of_a_dataset_instance_in_the_api_merge_into_its_report(qwen3_tokenizer,
                                                                       big_file):
    import loradoctor
    from loradoctor.inputs.specs import load_spec
    from loradoctor.shards import merge_partials

    ds = load_spec(CLASS)(qwen3_tokenizer, str(big_file))
    ds.rows = [r for r in ds.rows[:600] if r is not None]  # an instance alone: token rows
    whole = loradoctor.check(tokenizer=qwen3_tokenizer, dataset=ds)
    parts = [loradoctor.check(tokenizer=qwen3_tokenizer, dataset=ds, shard=f"{i}/3")
             for i in (1, 2, 3)]
    n = len(ds)
    assert [p.partial["records"] for p in parts] == [[0, n // 3], [n // 3, 2 * n // 3],
                                                     [2 * n // 3, n]]
    merged, _ = merge_partials([{**p.partial, "_path": f"shard {i}"}
                                for i, p in enumerate(parts, 1)])
    version = loradoctor.__version__
    assert comparable(json.dumps(merged.to_dict(version))) == \
        comparable(json.dumps(whole.to_dict(version)))
    assert next(f for f in merged.findings if f.code == "LD101").location == "MixedDataset[" \
        f"{next(f for f in whole.findings if f.code == 'LD101').evidence['lines'][0] - 1}]"


@pytest.mark.slow  # each spawned worker imports transformers and loads the tokenizer anew
def test_spawned_workers_load_the_tokenizer_and_the_code_again_and_agree(
        cli, qwen3_tokenizer_dir, tmp_path, monkeypatch):
    # Where there is no fork (Windows, and macOS's default), workers start from nothing.
    from loradoctor.masking import workers

    data = _kit().write_jsonl(tmp_path / "mixed.jsonl", 700, seed=3)
    args = ["check-dataset", data, "--tokenizer", qwen3_tokenizer_dir, "--dataset", CLASS,
            "--select", "LD101,LD103,LD104"]
    one = run_json(cli, *args)
    monkeypatch.setattr(workers, "START_METHOD", "spawn")
    assert run_json(cli, *args, "--workers", 2) == one
