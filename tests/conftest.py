"""Shared test fixtures: real artifacts from the cache (built on first use) and the real CLI.

`cli` runs `loradoctor.cli.main` in this process (the real argument parsing, engine and
renderer, without paying a torch import per test); `cli_subprocess` runs `python -m
loradoctor` for the tests that must see the process boundary (exit codes, stdout purity).

Under pytest-xdist (`make test` runs `-n 2`) each worker is a process of its own: torch's
threads are shared out among the workers, and the cached artifacts are built once, before
the workers start, so that no two workers build the same folder.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# CI must not fail on a one-in-a-million draw that a local run never saw: under CI=true every
# property test replays the same examples; locally they stay random and keep exploring.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
DATA = FIXTURES / "data"
PIPELINES = FIXTURES / "pipelines"
MASKING = FIXTURES / "masking"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _threads_per_worker() -> int:
    """The cores this process may use, shared out among pytest-xdist's workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


# Set before torch is imported (it reads them once); the processes a test starts inherit them.
# N workers each running torch with one thread per core would oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_threads_per_worker()))


# glibc hands every allocation over 32 MiB straight back to the kernel when it is freed, and the
# kernel zeroes fresh pages for the next one. The suite's models have the real 151,936-token
# vocabulary, so every forward makes and frees logits of a few hundred MiB: a check-model on the
# tiny Qwen3 spent 40% of its CPU time in the kernel. Here freed memory stays for reuse (in
# this process through mallopt, in the processes it starts through the environment), which
# cut the model tests' time by a sixth; a user's process is left as it is.
_MALLOC = {"MALLOC_MMAP_MAX_": (-4, 0), "MALLOC_TRIM_THRESHOLD_": (-1, 2**31 - 1)}


def _keep_freed_memory() -> None:
    for name, (option, value) in _MALLOC.items():
        os.environ.setdefault(name, str(value))
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        for option, value in _MALLOC.values():
            libc.mallopt(option, value)
    except (OSError, AttributeError):  # not glibc: its own allocator, left as it is
        pass


_keep_freed_memory()


def pytest_configure(config):
    """On pytest-xdist's controller, build the cached artifacts a fresh cache lacks before any
    worker starts: two workers building the same missing folder would each replace the
    other's (`assets.build_atomically` renames over a finished folder)."""
    if getattr(config.option, "numprocesses", None) and "PYTEST_XDIST_WORKER" not in os.environ:
        from .helpers import build_cached_artifacts, cached_artifacts_missing
        if cached_artifacts_missing():
            build_cached_artifacts()


def pytest_collection_finish(session):
    """What collection made lives to the end of the run: the imported modules (torch,
    transformers, PEFT, TRL: over half a million objects) and the collected tests. Frozen,
    the cyclic collector stops walking it. check-model calls gc.collect() after each of its
    measurements (model/memory.py), several times per run; each walk of that heap costs a
    few tenths of a second of CPU."""
    gc.freeze()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_protocol(item, nextitem):
    """After each test, its garbage is collected and what it left alive (modules imported on
    first use, cached tokenizers, module and session fixtures) is frozen too, so the next
    test's collections walk only what that test makes. Reference counting still frees what
    is frozen; only a reference cycle left by a fixture torn down later waits for the end of
    the run (the workers' peak memory stays as it was). It halves the CPU of the model tests."""
    yield
    gc.collect()
    gc.freeze()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir() -> Path:
    from loradoctor import assets
    return assets.qwen3_tokenizer_dir()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from loradoctor import assets
    return assets.smollm2_dir()


@pytest.fixture(scope="session")
def tiny_qwen3_dir() -> Path:
    from loradoctor import assets
    return assets.tiny_qwen3_dir()


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    from loradoctor import assets
    return assets.tiny_llama_dir()


@pytest.fixture(scope="session")
def qlora_base_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny seeded Llama checkpoints (fp32, vocab 512, 2 layers, 4 heads, 2 KV heads) to load
    quantized: `w64` (hidden 64, intermediate 128: every width a multiple of 64) and `w40`
    (hidden 40, intermediate 80: widths bitsandbytes' CPU layout cannot hold)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("qlora-bases")
    out = {}
    for name, hidden, intermediate in (("w64", 64, 128), ("w40", 40, 80)):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=intermediate,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256)
        LlamaForCausalLM(config).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def qwen3_tokenizer(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the real CLI in-process: `cli("check-dataset", path, "--tokenizer", tok)`.

    Piped output is 140 columns wide unless COLUMNS says otherwise; pytest-xdist's workers set
    COLUMNS=80, so it is removed here: a report reads the same under -n 2 as without."""
    from loradoctor.cli import main

    monkeypatch.delenv("COLUMNS", raising=False)

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


@pytest.fixture
def cli_subprocess():
    """Run `python -m loradoctor ...` as a user would, in a separate process."""
    def run(*args, timeout: int = 300) -> CliResult:
        env = {**os.environ, "COLUMNS": "120"}
        proc = subprocess.run([sys.executable, "-m", "loradoctor", *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
    return run


# --- tokenizers and modules shared across test folders ------------------------------------


@pytest.fixture(autouse=True)
def load_each_tokenizer_once(monkeypatch):
    """The CLI loads its tokenizer per run (about 2 s of CPU for the 151k-token Qwen3
    vocabulary, most of it transformers parsing tokenizer.json) and the suite runs it hundreds
    of times, so the real loader's result is kept per directory (and its files' times).

    A user's dataset class may change the tokenizer it is given (fixtures/pipelines/
    padding_dataset.py sets pad_token and padding_side), so after each test every kept
    tokenizer gets back the settings it was loaded with."""
    from loradoctor.inputs import pretrained
    monkeypatch.setattr(pretrained, "load_tokenizer", _cached_loader(pretrained.load_tokenizer))
    yield
    for _, restore in _LOADED.values():
        restore()


_LOADED: dict = {}  # (directory, its files' times) -> (tokenizer, restore its settings)


def _cached_loader(real):
    from loradoctor.inputs.tokenizer_state import restorer

    def load_tokenizer(path):
        folder = Path(path)
        if not folder.is_dir():  # a hub id or a missing directory: the real loader's error
            return real(path)
        key = (str(folder), tuple((f.name, f.stat().st_mtime_ns) for f in folder.iterdir()))
        if key not in _LOADED:
            tok = real(path)
            _LOADED[key] = (tok, restorer(tok))
        return _LOADED[key][0]
    return load_tokenizer


@pytest.fixture
def private_tempdir(tmp_path_factory, monkeypatch):
    """The system's temporary folder, for this test alone: a test that compares what is in it
    before and after a run must not see another worker's (or another program's) files."""
    import tempfile
    folder = tmp_path_factory.mktemp("tmp")
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="session")
def variants():
    spec = importlib.util.spec_from_file_location("tokenizer_variants",
                                                  MASKING / "tokenizer_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tokenizers(qwen3_tokenizer_dir, smollm2_dir, variants, tmp_path_factory):
    """name -> tokenizer directory. Each variant of the Qwen3 tokenizer is written the first
    time a test asks for it (about two seconds each: the 151k vocabulary loaded and saved)."""
    root = tmp_path_factory.mktemp("tokenizers")
    return BuiltOnFirstUse({
        "qwen3": lambda: qwen3_tokenizer_dir,
        "smollm2": lambda: smollm2_dir,
        "llama3": lambda: variants.llama3_style(qwen3_tokenizer_dir, root / "llama3"),
        "llama3-no-bos": lambda: variants.llama3_without_bos(qwen3_tokenizer_dir,
                                                             root / "llama3-no-bos"),
        "strict": lambda: variants.strict(qwen3_tokenizer_dir, root / "strict"),
    })


class BuiltOnFirstUse(dict):
    """A dict whose value for a key is built by that key's builder when first looked up."""

    def __init__(self, builders: dict):
        super().__init__()
        self.builders = builders

    def __missing__(self, key):
        self[key] = self.builders[key]()
        return self[key]


@pytest.fixture(scope="session")
def modules_imported_once():
    """pytester drops, after each test, the modules imported since it was set up. torch cannot
    be imported twice in one process, and a second copy of loradoctor's modules would make two
    `SkipCheck` classes; so they are all imported before any pytester exists."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import loradoctor.api  # noqa: F401
    import loradoctor.engine  # noqa: F401
    import loradoctor.masking.analysis  # noqa: F401
    import loradoctor.masking.fuzz_search  # noqa: F401
    import loradoctor.registry  # noqa: F401
    import loradoctor.render  # noqa: F401
