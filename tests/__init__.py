"""loradoctor test suite."""
