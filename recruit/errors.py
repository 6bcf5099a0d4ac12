"""The one exception type users see: a clear, one-line message, printed by the CLI without a traceback."""


class RecruitError(Exception):
    """An error caused by the user's input or environment (bad file, missing corpus, wrong config).

    The CLI prints ``error: <message>`` and exits with status 2; library callers can catch it.
    """
