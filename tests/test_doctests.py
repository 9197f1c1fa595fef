"""Every docstring example in ``agent`` runs as a test: the examples double as the spec."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import agent

# __main__ modules run the CLI when imported; they hold no examples.
MODULES = sorted(m.name for m in pkgutil.walk_packages(agent.__path__, "agent.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", ["agent", *MODULES])
def test_docstring_examples(name, capsys):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=False)
    assert result.failed == 0, capsys.readouterr().out


@pytest.mark.parametrize("name", ["agent.drift.ks.ks_2samp", "agent.drift.psi.psi",
                                  "agent.drift.wasserstein.wasserstein",
                                  "agent.drift.categorical.js_divergence",
                                  "agent.buffers.RingBuffer"])
def test_pure_functions_have_examples(name):
    module, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    assert doctest.DocTestFinder(recurse=False).find(obj)[0].examples, f"{name} has no example"
