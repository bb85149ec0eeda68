"""Tests of the Axolotl plugin, run in Axolotl's own virtual environment (`make test-axolotl`)."""
