"""DATA beyond JSON Lines: parquet and arrow files, globs of them, `save_to_disk` folders, and
live `datasets.Dataset` / `IterableDataset` objects in the API.

The same conversations are written in every format (with `pyarrow` and `datasets`, as users
write them) and checked with the real Qwen3 tokenizer: the findings must be the JSON Lines
file's, rows numbered from 1 as its lines are, and locations must name the file a row is in.
"""

from __future__ import annotations

import json
import sys

import pytest

import loradoctor

from ..conftest import FIXTURES

pytestmark = pytest.mark.usefixtures('load_each_tokenizer_once')

MASKING = FIXTURES / "masking"
FUNCTION = f"{MASKING / 'mixed_samples.py'}:label"
CLASS = f"{MASKING / 'table_dataset.py'}:MixedDataset"

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")


def _kit():
    sys.path.insert(0, str(MASKING))
    try:
        import mixed_records
    finally:
        sys.path.remove(str(MASKING))
    return mixed_records


@pytest.fixture(scope="module")
def recs():
    return _kit().records(300, seed=11)


@pytest.fixture(scope="module")
def files(tmp_path_factory, recs):
    """The same 300 records as JSON Lines, parquet (3 row groups), an arrow IPC file, a
    save_to_disk folder, a DatasetDict folder and three parquet parts."""
    d = tmp_path_factory.mktemp("formats")
    (d / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs),
                                   encoding="utf-8")
    _kit().write_parquet(d / "chats.parquet", recs, group=100)
    with pa.OSFile(str(d / "chats.arrow"), "wb") as sink:
        table = pa.Table.from_pylist(recs)
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=64)
    ds = datasets.Dataset.from_list(recs)
    ds.save_to_disk(str(d / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(
        str(d / "saved_dict"))
    (d / "parts").mkdir()
    for k in range(3):
        _kit().write_parquet(d / "parts" / f"part-{k}.parquet", recs[100 * k:100 * (k + 1)])
    return d


def run_json(cli, data, *args) -> tuple[int, dict]:
    result = cli("check-dataset", str(data), *map(str, args), "--json")
    assert result.code in (0, 1), result.err
    report = json.loads(result.out)
    assert not [c for c in report["checks"] if c["status"] == "crash"], report["findings"]
    for c in report["checks"]:
        c.pop("duration_s")
    return result.code, report


def counted(findings) -> list:
    """Each finding's rule, count and line numbers (not its places, which name the input)."""
    as_dicts = [f if isinstance(f, dict) else f.to_dict() for f in findings]
    return [(f["code"], f["evidence"].get("count"), f["evidence"].get("lines"))
            for f in as_dicts]


def _renamed(report: dict, old: str, new: str) -> dict:
    return json.loads(json.dumps(report).replace(old, new))


@pytest.mark.parametrize("name", ["chats.parquet", "chats.arrow", "saved", "saved_dict"])
def test_a_table_gives_the_json_lines_files_report_row_for_line(cli, qwen3_tokenizer_dir,
                                                               files, name):
    args = ["--tokenizer", qwen3_tokenizer_dir, "--dataset", FUNCTION, "--max-length", 40]
    code, jsonl = run_json(cli, files / "chats.jsonl", *args)
    table_code, table = run_json(cli, files / name, *args)
    assert table_code == code == 1
    assert table == _renamed(jsonl, str(files / "chats.jsonl"), str(files / name))
    assert {"LD101", "LD103", "LD104"} <= {f["code"] for f in table["findings"]}


def test_a_dataset_class_reads_the_parquet_file_it_is_given(cli, qwen3_tokenizer_dir, files):
    args = ["--tokenizer", qwen3_tokenizer_dir, "--dataset", CLASS]
    _, jsonl = run_json(cli, files / "chats.jsonl", *args)
    _, table = run_json(cli, files / "chats.parquet", *args)
    assert table == _renamed(jsonl, str(files / "chats.jsonl"), str(files / "chats.parquet"))


def test_a_glob_of_parquet_files_numbers_rows_across_them_and_names_each_file(
        cli, qwen3_tokenizer_dir, files, recs):
    args = ["--tokenizer", qwen3_tokenizer_dir, "--dataset", FUNCTION]
    pattern = files / "parts" / "part-*.parquet"
    _, whole = run_json(cli, files / "chats.jsonl", *args)
    _, parts = run_json(cli, pattern, *args)
    assert counted(parts["findings"]) == counted(whole["findings"])  # rows across the files
    assert parts["summary"]["masking"] == whole["summary"]["masking"]
    ld101 = next(f for f in parts["findings"] if f["code"] == "LD101")
    later = [n for n in ld101["evidence"]["lines"] if n > 200]
    assert later, "some sample without labels in the third file"
    from loradoctor.inputs.sources import locate, open_source
    layout = open_source(str(pattern)).layout
    assert locate(str(pattern), layout, later[0]) == \
        f"{files / 'parts' / 'part-2.parquet'}:{later[0] - 200}"
    first = ld101["evidence"]["lines"][0]
    assert ld101["location"] == f"{files / 'parts' / f'part-{(first - 1) // 100}.parquet'}:" \
                                f"{(first - 1) % 100 + 1}"


def test_shards_of_a_glob_merge_into_the_globs_report(cli, qwen3_tokenizer_dir, files,
                                                      tmp_path):
    args = ["--tokenizer", qwen3_tokenizer_dir, "--dataset", FUNCTION, "--show", 1]
    pattern = files / "parts" / "part-*.parquet"
    _, whole = run_json(cli, pattern, *args)
    paths = []
    for i in (1, 2):
        result = cli("check-dataset", str(pattern), *map(str, args), "--shard", f"{i}/2",
                     "--json")
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(result.out)
    merged = json.loads(cli("merge", *paths, "--json").out)
    for c in merged["checks"]:
        c.pop("duration_s")
    assert merged == whole


def test_sharegpt_and_openai_turns_in_one_table_are_both_read(cli, qwen3_tokenizer_dir,
                                                             tmp_path):
    # In a table every struct has every field: a ShareGPT turn has role and content null.
    # A record without `messages` has it null.
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
             "messages": None},
            {"conversations": [{"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Yo"}], "messages": None},
            {"conversations": None, "messages": [{"role": "user", "content": "Hi"},
                                                 {"role": "assistant", "content": "Yo"}]}]
    path = tmp_path / "mixed_shapes.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    code, report = run_json(cli, path, "--tokenizer", qwen3_tokenizer_dir)
    assert code == 0 and report["summary"]["records_readable"] == 3
    assert report["summary"]["record_shapes"] == {"sharegpt": 1, "conversations": 1,
                                                  "messages": 1}


@pytest.mark.slow  # 1.5 to 4 s, measured in the day-to-day lane
def test_token_rows_in_parquet_are_checked_with_tokenized(cli, qwen3_tokenizer_dir, tmp_path,
                                                         recs):
    from loradoctor.inputs.specs import load_spec
    rows_kit = sys.modules[load_spec(f"{MASKING / 'token_rows.py'}:write_jsonl").__module__]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    rows = [rows_kit.correct(tok, r["messages"]) for r in recs[:40]]
    rows[7] = rows_kit.nothing_supervised(rows[7])
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)
    code, report = run_json(cli, path, "--tokenizer", qwen3_tokenizer_dir, "--tokenized")
    (ld101,) = [f for f in report["findings"] if f["code"] == "LD101"]
    assert code == 1 and ld101["evidence"]["lines"] == [8]
    assert ld101["location"] == f"{path}:8"


@pytest.mark.parametrize("what,needle", [
    ("nothing/*.parquet", "the pattern matches no file"),
    ("chats.*", "which is not a parquet or arrow file"),
    ("broken.parquet", "cannot be read as parquet"),
    ("two_splits", "a DatasetDict folder with splits a, b; pass the split's folder"),
    ("empty_folder", "neither a datasets save_to_disk folder"),
])
def test_tables_that_cannot_be_read_are_input_errors_naming_them(cli, qwen3_tokenizer_dir,
                                                                  files, what, needle):
    (files / "broken.parquet").write_bytes(b"not parquet at all")
    (files / "empty_folder").mkdir(exist_ok=True)
    if not (files / "two_splits").exists():
        ds = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "x"}]}])
        datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(files / "two_splits"))
    result = cli("check-dataset", str(files / what), "--tokenizer", str(qwen3_tokenizer_dir))
    assert result.code == 2 and needle in result.err and "Traceback" not in result.err


# --- live datasets objects in the API ----------------------------------------------------------


def test_a_datasets_object_of_conversations_is_streamed_not_listed(qwen3_tokenizer, files,
                                                                   recs):
    ds = datasets.load_from_disk(str(files / "saved"))
    run = loradoctor.api.prepare(tokenizer=qwen3_tokenizer, data=ds, dataset=FUNCTION)
    assert run.parts[0].ctx.records_given is ds  # kept as it is, read in batches
    report = run.execute()
    on_file = loradoctor.check(tokenizer=qwen3_tokenizer, data=files / "chats.jsonl",
                               dataset=FUNCTION)
    def seen(r, path=None):
        text = json.dumps([(f.code, f.message, f.evidence) for f in r.findings])
        return text.replace(str(path), "records") if path else text
    assert seen(on_file, files / "chats.jsonl") == seen(report)
    ld101 = next(f for f in report.findings if f.code == "LD101")
    assert ld101.location == f"records:{ld101.evidence['lines'][0]}"


def test_an_iterable_dataset_without_a_length_is_read_as_a_stream(qwen3_tokenizer, files):
    stream = datasets.load_from_disk(str(files / "saved")).to_iterable_dataset(num_shards=2)
    report = loradoctor.check(tokenizer=qwen3_tokenizer, data=stream, dataset=FUNCTION)
    on_file = loradoctor.check(tokenizer=qwen3_tokenizer, data=files / "chats.jsonl",
                               dataset=FUNCTION)
    assert counted(report.findings) == counted(on_file.findings)
    sharded = [loradoctor.check(tokenizer=qwen3_tokenizer, data=stream, dataset=FUNCTION,
                                shard=(i, 2)) for i in (1, 2)]
    assert [r.partial["records"] for r in sharded] == [[0, 150], [150, 300]]


def test_token_rows_as_datasets_objects_are_checked_by_their_own_tokens(qwen3_tokenizer, recs):
    from loradoctor.inputs.specs import load_spec
    rows_kit = sys.modules[load_spec(f"{MASKING / 'token_rows.py'}:write_jsonl").__module__]
    rows = [rows_kit.correct(qwen3_tokenizer, r["messages"]) for r in recs[:30]]
    rows[4] = rows_kit.prompt_supervised(rows[4])
    ds = datasets.Dataset.from_list(rows)
    as_data = loradoctor.check(tokenizer=qwen3_tokenizer, data=ds, tokenized=True)
    as_stream = loradoctor.check(tokenizer=qwen3_tokenizer,
                                 dataset=ds.to_iterable_dataset())
    for report in (as_data, as_stream):
        (ld103,) = [f for f in report.findings if f.code == "LD103"]
        assert ld103.evidence["lines"] == [5]
    assert {f.location for f in as_data.findings} == {"Dataset[4]"}
    assert {f.location for f in as_stream.findings} == {"IterableDataset[4]"}
