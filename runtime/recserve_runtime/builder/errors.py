"""The one error type the builder raises for bad input; its message says what to do."""


class BuildError(RuntimeError):
    """Bad input or an unsupported model; the CLI prints it and exits non-zero."""
