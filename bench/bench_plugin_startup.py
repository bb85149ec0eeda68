"""Benchmark: pytest's start-up with the loradoctor plugin installed and with it blocked.

The plugin is registered through the `pytest11` entry point, so every pytest run in an
environment where loradoctor is installed imports it. This measures, side by side in one run,
`python -m pytest --collect-only -q` on a scratch project of one trivial test:

  (a) with the plugin blocked (`-p no:loradoctor`: its module is never imported, as if
      loradoctor were not installed);
  (b) with the plugin loaded as installed, without `--loradoctor` (it must collect nothing
      and import nothing heavy).

Runs are interleaved (a, b, a, b, ...) so that load from other processes hurts both sides;
medians and the difference in milliseconds are printed (target: under 50 ms). Bytecode is
compiled once into a temporary cache folder and read from there, as in a normal install.

    .venv/bin/python bench/bench_plugin_startup.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def once(project: Path, extra: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *extra], cwd=project, capture_output=True,
                          text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pytest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loradoctor-bench-") as tmp:
        project = Path(tmp)
        (project / "test_one.py").write_text("def test_one():\n    assert True\n")
        (project / "pyproject.toml").write_text("[tool.pytest.ini_options]\n")
        # Bytecode as a normal install has it: compiled once (into a folder of our own, so
        # nothing is written into the checkout), then read, even where the environment says
        # PYTHONDONTWRITEBYTECODE (source compiled on every import would be measured instead).
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS")}
        env["PYTHONPYCACHEPREFIX"] = str(project / "pycache")
        once(project, [], env)  # compile and warm the file system cache for both sides
        once(project, ["-p", "no:loradoctor"], env)
        blocked, loaded = [], []
        for _ in range(args.repeat):
            blocked.append(once(project, ["-p", "no:loradoctor"], env))
            loaded.append(once(project, [], env))
    a, b = statistics.median(blocked), statistics.median(loaded)
    print(f"pytest --collect-only on one trivial test, {args.repeat} interleaved runs each")
    print(f"(a) plugin blocked (-p no:loradoctor): median {a * 1000:.0f} ms "
          f"(min {min(blocked) * 1000:.0f})")
    print(f"(b) plugin installed, no --loradoctor: median {b * 1000:.0f} ms "
          f"(min {min(loaded) * 1000:.0f})")
    print(f"difference b - a: {(b - a) * 1000:+.1f} ms median, "
          f"{(min(loaded) - min(blocked)) * 1000:+.1f} ms min (target < 50 ms)")


if __name__ == "__main__":
    main()
