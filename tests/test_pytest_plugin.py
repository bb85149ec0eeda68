"""The pytest plugin is registered through its entry point and adds its option group."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_the_plugin_adds_the_loradoctor_option_group(pytester):
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(["*loradoctor pre-training checks*", "*--loradoctor-model=DIR*"])
