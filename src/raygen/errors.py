"""raygen's exception tree: every error raygen raises on purpose is a RaygenError (httpx's model).
Library errors are translated at the edge (`raise X(...) from exc`). A leaf module: it imports nothing
of raygen, so the engine (no Ray) and every package can raise these.

    RaygenError                      str() is the user-facing message: what was wrong and what to do
    ├── ConfigError (ValueError)     a config file or value is wrong (names the key and the file)
    ├── DataError                    input data is missing, unreadable or empty after cleaning
    ├── TrainingError                training could not start, diverged, or did not finish
    ├── RegistryError                the model registry is missing a model, version or alias
    ├── StorageError                 a path or URI (s3://, gs://) cannot be read or written
    ├── RequestError                 an API request is wrong; carries the HTTP status and OpenAI error type
    └── EngineError                  raised by the inference engine (raygen.engine)
        ├── EngineSetupError (ValueError)      the model or device cannot be served as configured
        │   └── UnsupportedModelError          the architecture has no raygen implementation
        ├── InvalidPromptError (ValueError)    a request the engine cannot take: empty, bad ids, bad params
        │   └── PromptTooLongError             longer than the context or the whole KV cache
        ├── EngineOverloadedError              max_num_waiting requests already wait: retry shortly
        └── EngineClosedError                  the engine was shut down

ConfigError and the engine's input errors are also ValueErrors, so pydantic validators may raise them
and callers that catch ValueError keep working. (Inside pydantic validators a plain ValueError is fine:
pydantic wraps it, and the loader re-raises it as ConfigError or RequestError naming the field.)
"""

from __future__ import annotations


class RaygenError(Exception):
    """Base class: the message is meant for the user and says what to do."""


class ConfigError(RaygenError, ValueError):
    pass


class DataError(RaygenError):
    pass


class TrainingError(RaygenError):
    pass


class RegistryError(RaygenError):
    pass


class StorageError(RaygenError):
    pass


class EngineError(RaygenError):
    pass


class EngineSetupError(EngineError, ValueError):
    pass


class UnsupportedModelError(EngineSetupError):
    pass


class InvalidPromptError(EngineError, ValueError):
    pass


class PromptTooLongError(InvalidPromptError):
    pass


class GrammarError(InvalidPromptError):
    """A structured-output spec that is malformed or does not compile; param: the request field it came from."""

    def __init__(self, message: str, param: str = "structured_outputs"):
        super().__init__(message)
        self.param = param


class EngineOverloadedError(EngineError):
    pass


class EngineClosedError(EngineError):
    pass


class RequestError(RaygenError):
    """A client error, rendered as OpenAI's error body by the ingress."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.status = status  # HTTP status code
        self.param = param  # the request field at fault, when there is one
        self.type = type  # OpenAI error type
        self.code = code
        self.retry_after = retry_after  # seconds, sent as Retry-After (429 and 503)

    def __reduce__(self):  # survive pickling across Ray handle calls with status and param intact
        return (_rebuild_request_error, (self.message, self.status, self.param, self.type, self.code,
                                         self.retry_after))

    def to_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)} if self.retry_after is not None else {}


def unavailable(message: str, retry_after: int = 1, code: str = "overloaded") -> RequestError:
    """A 503 the client should retry: the server is overloaded or a model replica is being replaced."""
    return RequestError(message, status=503, type="server_error", code=code, retry_after=retry_after)


def _rebuild_request_error(message, status, param, type, code, retry_after=None) -> RequestError:
    return RequestError(message, status=status, param=param, type=type, code=code, retry_after=retry_after)


def find_cause(exc: BaseException, types: type | tuple[type, ...]) -> BaseException | None:
    """The first exception of `types` in exc's chain, also when Ray wrapped it (once per handle hop it
    crossed: Ray keeps the original as `.cause`)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, types):
            return e
        seen.add(id(e))
        todo += [getattr(e, "cause", None), e.__cause__]
    return None


def as_request_error(exc: BaseException) -> RequestError | None:
    """The RequestError behind an exception, also when Ray wrapped it."""
    return find_cause(exc, RequestError)
