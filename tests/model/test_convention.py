"""The loss convention measured on real models: how each is called and how its loss reads labels.

Real transformers models (the cached tiny Qwen3 and Llama), the two user-model fixtures
(MiniMind-style `PreTrainedModel`, nanoGPT-style GPT) and small seeded modules built inline
for the other shapes people write (bare logits, a dict, a loss that ignores nothing). A
property test builds a model for every combination of the conventions and checks that
`detect` names each one.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from loradoctor.inputs.pretrained import load_model
from loradoctor.model import convention as cv
from loradoctor.model.safety import changes, snapshot

from ..conftest import FIXTURES

MODELS = FIXTURES / "models"


def _module(name):
    spec = importlib.util.spec_from_file_location(f"fixture_{name}", MODELS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nanogpt():
    return _module("nanogpt_style")


@pytest.fixture(scope="module")
def minimind():
    return _module("minimind_style")


def _probe(vocab, batch=4, length=64, seed=0):
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# --- real models and the two fixtures -----------------------------------------------------


@pytest.mark.parametrize("which", ["tiny_qwen3_dir", "tiny_llama_dir"])
def test_a_transformers_model_shifts_ignores_minus_100_and_returns_an_object(request, which):
    model = load_model(request.getfixturevalue(which))
    conv = cv.detect(model, _probe(model.config.vocab_size))
    assert conv.measured and conv.note is None
    assert (conv.output, conv.input_arg, conv.labels_arg, conv.mask_arg) == \
        ("hf", "input_ids", "labels", True)
    assert conv.shifts and conv.ignore_index == -100 and not conv.last_only
    assert "use_cache" in conv.extras
    assert conv.describe() == "HF-style output, shifts labels itself, ignores -100"


def test_the_minimind_style_model_reads_labels_as_transformers_does(minimind):
    conv = cv.detect(minimind.tiny_minimind(), _probe(256))
    assert conv.describe() == "HF-style output, shifts labels itself, ignores -100"
    assert conv.evidence["loss"] == pytest.approx(conv.evidence["shifted"], rel=1e-6)


def test_the_nanogpt_style_model_does_not_shift_ignores_minus_1_and_returns_a_tuple(nanogpt):
    conv = cv.detect(nanogpt.tiny_gpt(), _probe(256))
    assert (conv.output, conv.input_arg, conv.labels_arg, conv.mask_arg) == \
        ("tuple", "idx", "targets", False)
    assert not conv.shifts and conv.ignore_index == -1 and conv.last_only
    assert conv.describe() == ("returns (logits, loss), does not shift labels (targets are the "
                               "next tokens), ignores -1, last-position logits without labels")
    # The two readings were told apart by far more than the tolerance.
    e = conv.evidence
    assert e["loss"] == pytest.approx(e["unshifted"], rel=1e-6)
    assert abs(e["shifted"] - e["unshifted"]) > 50 * cv.LOSS_RTOL * e["loss"]


def test_calls_through_the_convention_give_every_positions_logits_and_the_models_loss(nanogpt):
    model = nanogpt.tiny_gpt()
    probe = _probe(256)
    conv = cv.detect(model, probe)
    with torch.no_grad():
        logits = cv.logits(model, probe, conv)  # last_only: called with targets
        out = cv.call(model, probe, conv, labels=True)
        own = cv.loss(out, probe, conv)
    assert logits.shape == (4, 64, 256)
    # By hand: nanoGPT's targets are the next tokens, the last position ignored with -1.
    targets = torch.cat([probe["input_ids"][:, 1:], torch.full((4, 1), -1)], dim=1)
    with torch.no_grad():
        hand_logits, hand_loss = model(probe["input_ids"], targets)
    assert torch.equal(logits, hand_logits) and float(own) == float(hand_loss)
    # ... which is the HF loss of the same logits on the aligned labels.
    hf = cv.cross_entropy(logits, probe["labels"], shifts=True, ignore_index=-100)
    assert float(hf) == pytest.approx(float(hand_loss), rel=1e-6)


def test_detect_leaves_the_model_and_the_rng_as_found(nanogpt):
    model = nanogpt.tiny_gpt()
    model.train()
    before = snapshot(model)
    rng = torch.random.get_rng_state()
    cv.detect(model, _probe(256))
    assert changes(model, before) == []
    assert torch.equal(rng, torch.random.get_rng_state())
    assert F.cross_entropy is torch.nn.functional.cross_entropy  # the spy is gone


# --- other shapes people write -------------------------------------------------------------


class BareLogits(nn.Module):
    """`forward(x) -> logits`: the loss is the training loop's."""

    def __init__(self, vocab=64, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)

    def forward(self, x):
        return self.head(self.emb(x))  # (B, T, V)


class NoIgnore(nn.Module):
    """A hand-written NLL by gather: every label is scored, none can be ignored."""

    def __init__(self, vocab=64, dim=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.emb(input_ids))
        if labels is None:
            return {"logits": logits}
        logp = logits[:, :-1].log_softmax(-1)
        nll = -logp.gather(-1, labels[:, 1:, None]).mean()
        return {"logits": logits, "loss": nll}


def test_a_model_that_returns_bare_logits_is_scored_as_transformers_scores_it():
    conv = cv.detect(BareLogits(), _probe(64))
    assert conv.output == "tensor" and conv.input_arg == "x" and conv.labels_arg is None
    assert not conv.has_loss and conv.describe().startswith("returns bare logits, computes no "
                                                            "loss")
    probe = _probe(64)
    model = BareLogits()
    with torch.no_grad():
        out = cv.call(model, probe, conv, labels=True)
        got = cv.loss(out, probe, conv)
        hand = F.cross_entropy(model(probe["input_ids"])[:, :-1].reshape(-1, 64),
                               probe["input_ids"][:, 1:].reshape(-1))
    assert float(got) == pytest.approx(float(hand), rel=1e-6)


def test_a_loss_that_ignores_nothing_is_measured_so_on_the_cpu():
    conv = cv.detect(NoIgnore(), _probe(64))
    assert conv.output == "dict" and conv.has_loss and conv.shifts
    assert conv.ignore_index is None and "ignores neither -100 nor -1" in conv.describe()


def test_a_forward_that_raises_leaves_what_its_signature_says_with_a_note(nanogpt):
    model = nanogpt.tiny_gpt(block_size=8)  # shorter than the probe rows: its assert fires
    conv = cv.detect(model, _probe(256))
    assert not conv.measured and conv.input_arg == "idx" and conv.labels_arg == "targets"
    assert "the forward raised AssertionError" in conv.note


# --- every combination ---------------------------------------------------------------------


class Toy(nn.Module):
    """A seeded toy LM whose call and loss follow the convention it is built with."""

    def __init__(self, shifts, ignore, output, label_name, last_only):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(64, 16), nn.Linear(16, 64)
        self.shifts, self.ignore, self.output = shifts, ignore, output
        self.label_name, self.last_only = label_name, last_only

    def forward(self, input_ids, attention_mask=None, **kwargs):
        labels = kwargs.get(self.label_name)
        logits = self.head(self.emb(input_ids))  # (B, T, V)
        loss = None
        if labels is not None:
            lg, lb = (logits[:, :-1], labels[:, 1:]) if self.shifts else (logits, labels)
            loss = F.cross_entropy(lg.reshape(-1, 64), lb.reshape(-1), ignore_index=self.ignore)
        elif self.last_only:
            logits = logits[:, -1:]
        if self.output == "tuple":
            return logits, loss
        if self.output == "dict":
            return {"logits": logits, **({"loss": loss} if loss is not None else {})}
        from transformers.modeling_outputs import CausalLMOutput
        return CausalLMOutput(loss=loss, logits=logits)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shifts=st.booleans(), ignore=st.sampled_from([-100, -1, 7]),
       output=st.sampled_from(["hf", "tuple", "dict"]),
       last_only=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_detect_names_every_combination_of_shift_ignore_index_and_output(shifts, ignore, output,
                                                                        last_only, seed):
    model = Toy(shifts, ignore, output, "labels", last_only)
    conv = cv.detect(model, _probe(64, seed=seed))
    assert conv.measured and conv.has_loss
    assert (conv.shifts, conv.output, conv.last_only) == (shifts, output, last_only)
    # An ignore index that is a token id (7) is found only when the loss itself names it.
    assert conv.ignore_index == ignore
    # The probe's aligned labels, handed over by the convention, give the HF loss.
    probe = _probe(64, seed=seed)
    with torch.no_grad():
        full = cv.logits(model, probe, conv)
        got = cv.loss(cv.call(model, probe, conv, labels=True), probe, conv)
    hf = cv.cross_entropy(full, probe["labels"], shifts=True, ignore_index=-100)
    if ignore != 7 or not (probe["input_ids"][:, 1:] == 7).any():
        assert float(got) == pytest.approx(float(hf), rel=1e-5)
