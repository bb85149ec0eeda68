"""Errors a user can cause: bad files, bad SPECs, missing directories.

The CLI turns an `InputError` into one line on standard error and exit code 2;
everything else that goes wrong inside a check becomes a `crash` result.
"""


class InputError(Exception):
    """A usage or input problem, with a message that names the place (file:line, SPEC, dir)."""


class UnhealthyPipeline(Exception):
    """Raised by `loradoctor.gate` (and the Trainer callback) when the pipeline has an error.

    `.report` holds the full `Report`; the message is the concise report (one line per error).
    """

    def __init__(self, report, message: str):
        super().__init__(message)
        self.report = report
