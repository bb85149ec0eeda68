"""Errors a user can cause: bad files, bad SPECs, missing directories.

The CLI turns an `InputError` into one line on standard error and exit code 2;
everything else that goes wrong inside a check becomes a `crash` result.
"""


class InputError(Exception):
    """A usage or input problem, with a message that names the place (file:line, SPEC, dir)."""
