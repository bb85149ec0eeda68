"""The pytest plugin (registered through the `pytest11` entry point).

For now it only adds the `loradoctor` option group; the checks-as-test-items come with the
plugin issue. Kept import-light so installing loradoctor never slows an unrelated test run.
"""


def pytest_addoption(parser):
    group = parser.getgroup("loradoctor", "loradoctor pre-training checks")
    group.addoption("--loradoctor-model", default=None, metavar="DIR",
                    help="model directory to check before the test session")
    group.addoption("--loradoctor-apply", default=None, metavar="SPEC",
                    help="the LoRA apply function to check (file.py:NAME or pkg.module:NAME)")
    group.addoption("--loradoctor-data", default=None, metavar="DATA",
                    help="chat data file (JSON Lines) to check")
    group.addoption("--loradoctor-tokenizer", default=None, metavar="DIR",
                    help="tokenizer directory for the data checks")
