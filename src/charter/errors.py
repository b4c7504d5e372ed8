"""One exception tree. Library errors are translated into these at the boundary
(``raise ... from``); the CLI only formats them as one line."""

from __future__ import annotations


class CharterError(Exception):
    """Root of every error charter raises on purpose."""


class ConfigError(CharterError):
    """A setting, flag, recipe or model spec is wrong."""


class ConstitutionError(ConfigError):
    """A constitution file is missing, malformed or fails validation."""


class InputError(CharterError):
    """An input file is missing or a row in it is malformed."""


class BackendError(CharterError):
    """A model backend failed to answer.

    ``retryable`` errors (rate limits, 5xx, timeouts, dropped connections) are retried
    by the model wrapper; the others fail the request at once.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableBackendError(BackendError):
    """A transient failure: worth trying again after a pause."""

    retryable = True


class BackendUnavailable(RetryableBackendError):
    """The server cannot be reached at all. Fatal for a run once retries are spent."""


class BackendFatalError(BackendError):
    """The backend refuses every request (bad credentials, unknown model): stop the run."""


class LogprobsUnavailable(BackendError):
    """The backend or server returned no log-probabilities; callers fall back."""


class LogprobsRefused(LogprobsUnavailable):
    """The server answers requests but refuses any that ask for log-probabilities: callers
    fall back at once (no need to wait for more evidence)."""


class OptionsNotFound(BackendError):
    """None of the requested options appeared among the returned top log-probabilities. The
    server answered, and the caller asks another way (a judge that reasons first): the answer
    is counted, and cached, with what it cost."""

    def __init__(self, message: str, *, requests: int = 1, prompt_tokens: int = 0) -> None:
        super().__init__(message)
        self.requests = requests
        """HTTP requests the answer took (2 when a wider top list was asked for)."""
        self.prompt_tokens = prompt_tokens
        """Tokens the server read for it."""


class ContinueRefused(BackendError):
    """The server refuses to continue a partial assistant message (no
    ``continue_final_message``): callers ask in a new turn instead."""


class ParseError(CharterError):
    """A model's output could not be parsed into the expected form."""


class UngradedError(CharterError):
    """A judge that rewards RL left too many completions without a reward (a whole
    generation batch, or more than ``--max-ungraded`` of a run): training on what remains
    would learn from a reward that is mostly missing."""


class Refused(Exception):
    """A request a server of charter's (annotate, serve) refuses; ``status`` is the HTTP
    status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
