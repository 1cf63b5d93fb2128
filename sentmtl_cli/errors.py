"""The one exception type the CLI turns into a one-line message and exit status 2."""


class SentmtlError(Exception):
    """A problem with the user's input: config, data, text, or a model folder.

    The message is one line, names the file or key at fault, and says what to do.
    """

    exit_code = 2
