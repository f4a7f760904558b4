"""The one error type of publishing."""


class PublishError(ValueError):
    """A folder, results file or setting that cannot be published; the message says how to fix it."""
