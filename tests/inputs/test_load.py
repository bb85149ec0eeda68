"""Loaders: the four record shapes, line numbers, SPECs, directories; every failure one clear line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loradoctor.errors import InputError
from loradoctor.inputs import pretrained, specs
from loradoctor.inputs.records import normalise_record, read_records

from ..conftest import DATA, FIXTURES, PIPELINES

EXPECTED = [{"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "Seven."}]


@pytest.mark.parametrize("name,shape", [("chat_messages.jsonl", "messages"),
                                        ("chat_sharegpt.jsonl", "sharegpt")])
def test_messages_and_sharegpt_files_read_to_the_same_conversations(name, shape):
    records = list(read_records(DATA / name))
    assert [r.line for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[1].messages == EXPECTED
    assert records[1].shape == shape


def test_minimind_conversations_and_prompt_completion_records_are_read():
    persona = list(read_records(DATA / "persona.jsonl"))
    assert len(persona) == 24 and persona[0].messages[1]["role"] == "assistant"
    pc = list(read_records(DATA / "chat_prompt_completion.jsonl"))
    assert pc[0].messages == [{"role": "user", "content": "Who are you?"},
                              {"role": "assistant", "content": "I'm Pip, a tiny robot with a big grin!"}]


def test_a_json_list_file_is_accepted():
    records = list(read_records(DATA / "chat_list.json"))
    assert len(records) == 3 and records[1].messages == EXPECTED


def test_a_line_that_is_not_json_comes_back_with_its_line_and_the_rest_is_read():
    records = list(read_records(DATA / "bad_json_line3.jsonl"))
    assert [r.line for r in records] == [1, 2, 3, 4]
    broken = records[2]
    assert broken.messages is None and broken.unparsed
    assert broken.problem.startswith("not valid JSON (")
    assert records[3].messages is not None and not records[3].unparsed


def test_lines_that_are_not_utf8_or_start_with_a_bom_are_handled(tmp_path):
    good = (DATA / "chat_messages.jsonl").read_bytes().splitlines()[1]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"a": "\xff"}\n' + good + b"\n")
    records = list(read_records(path))
    assert records[0].messages == EXPECTED  # a byte-order mark is not a broken line
    assert records[1].unparsed and records[1].problem.startswith("not UTF-8 text")
    assert records[2].messages == EXPECTED


def test_a_file_with_no_line_of_json_is_an_input_error():
    with pytest.raises(InputError, match=r"not_json\.jsonl:1: not valid JSON .*no line of the "
                                         r"file is valid JSON"):
        list(read_records(DATA / "not_json.jsonl"))


def test_one_bad_record_among_many_comes_back_with_its_line_and_problem():
    records = list(read_records(DATA / "bad_one_record.jsonl"))
    problems = {r.line: r.problem for r in records if r.problem}
    assert set(problems) == {3, 5, 6}
    assert "no conversation" in problems[3]
    assert "'narrator'" in problems[5]
    assert "list content" in problems[6]


def test_empty_and_missing_files_are_input_errors():
    with pytest.raises(InputError, match="holds no records"):
        list(read_records(DATA / "empty.jsonl"))
    with pytest.raises(InputError, match="no such file"):
        list(read_records(DATA / "missing.jsonl"))


def test_records_are_streamed_not_read_whole(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(json.dumps({"messages": EXPECTED}) for _ in range(1000)) + "\n"
                    + "{broken\n")
    it = read_records(path)
    first = next(it)  # reading the first record does not parse (or fail on) the last line
    assert first.line == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant", "human", "gpt"]),
                          st.text(max_size=30)), min_size=1, max_size=6))
def test_every_shape_normalises_to_role_content_dicts(turns):
    as_messages = {"messages": [{"role": r, "content": c} for r, c in turns]}
    as_sharegpt = {"conversations": [{"from": r, "value": c} for r, c in turns]}
    a = normalise_record(as_messages, "x", 1)
    b = normalise_record(as_sharegpt, "x", 1)
    assert a.messages == b.messages
    assert all(set(m) == {"role", "content"} for m in a.messages)
    assert [m["content"] for m in a.messages] == [c for _, c in turns]


def test_specs_load_from_a_file_and_from_a_module():
    cls = specs.load_spec(f"{PIPELINES / 'minimind_dataset.py'}:LoRADataset")
    assert cls.__name__ == "LoRADataset"
    assert specs.load_spec("json:loads") is json.loads


@pytest.mark.parametrize("spec,message", [
    ("fixtures/pipelines/missing.py:apply_lora", "no such file"),
    (f"{PIPELINES / 'minimind_lora.py'}:apply_nothing", "has no attribute 'apply_nothing'"),
    (f"{FIXTURES / 'bad_inputs' / 'import_raises.py'}:apply_lora",
     r"RuntimeError: CUDA_VISIBLE_DEVICES is not set \(at .*import_raises\.py:4\)"),
    (f"{FIXTURES / 'bad_inputs' / 'syntax_error.py'}:apply_lora", r"SyntaxError.*syntax_error\.py:3"),
    ("no_such_module_xyz:thing", "no module named 'no_such_module_xyz'"),
    ("nocolon", "expected path/to/file.py:NAME"),
])
def test_bad_specs_say_what_is_wrong_in_one_line(spec, message):
    with pytest.raises(InputError, match=message) as info:
        specs.load_spec(spec)
    assert "\n" not in str(info.value)


def test_hub_ids_are_refused_without_reaching_a_hub():
    with pytest.raises(InputError, match="never downloads from a hub"):
        pretrained.local_dir("Qwen/Qwen3-0.6B", "model")
    with pytest.raises(InputError, match="no such directory"):
        pretrained.local_dir("./nope/model", "model")


def test_apply_args_parse_python_literals_and_keep_strings():
    assert specs.parse_kwargs(["rank=8", "alpha=16.0", "targets=['q_proj']", "name=qv"]) == {
        "rank": 8, "alpha": 16.0, "targets": ["q_proj"], "name": "qv"}
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        specs.parse_kwargs(["rank"])
