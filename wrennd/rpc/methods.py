"""The method table: what the daemon answers, with each method's params schema and nature.

A method is declared once with:

- ``params``: a JSON Schema (draft 2020-12) for the params *object*.  Methods
  that also accept params by position name them in ``positional``; an array
  is turned into an object with those names before validation, so handlers
  always receive a dict; ``rest`` names a list that collects the remaining
  positional params.
- ``kind``: ``Kind.LIFECYCLE`` work (create, pause, resume, template, ...)
  is shielded from the client: it runs to completion (or its own rollback)
  even when the client disconnects or the request is abandoned, because a
  VM's life must never depend on a connection.  ``Kind.READ`` work (queries,
  streams, exec) is cancelled when its client goes away.
- ``mutating``: the call changes host state; the server logs it with the
  caller's SO_PEERCRED.
- ``stream``: the call upgrades its connection to a raw byte channel
  (wrennd.rpc.channel); it is valid only as the first message of a connection.

Validation uses ``jsonschema``: schemas are checked when registered, so a bad
schema fails at startup, and a validator is compiled once per method.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema
from jsonschema.protocols import Validator

from wrennd.rpc.errors import InvalidParams, MethodNotFound
from wrennd.rpc.protocol import RequestId

# An empty params object, and nothing else, for methods that take none.
NO_PARAMS: Mapping[str, Any] = {"type": "object", "additionalProperties": False}
MAX_REPORTED_ERRORS = 5
MAX_ERROR_TEXT = 200


class Kind(enum.Enum):
    READ = "read"
    LIFECYCLE = "lifecycle"


@dataclass(frozen=True, slots=True)
class PeerCred:
    """The connecting process as the kernel reports it (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


class CallContext(Protocol):
    """What a handler knows about its call and how it talks back while it runs."""

    @property
    def method(self) -> str: ...

    @property
    def request_id(self) -> RequestId: ...

    @property
    def is_notification(self) -> bool: ...

    @property
    def peer(self) -> PeerCred: ...

    @property
    def connected(self) -> bool:
        """False once the client is gone: further notifications go nowhere."""
        ...

    async def notify(self, method: str, params: dict[str, Any]) -> bool:
        """Send a notification tied to this request (``params.request_id``).

        Returns False when it was not sent: the call is itself a notification,
        the client is gone, or (for lifecycle work, which never waits on a
        client) the client is not reading.  Read work waits for the client
        to catch up, which is the backpressure a stream needs.
        """
        ...

    async def progress(self, **fields: Any) -> bool:
        """``notify("progress", fields)``: stage/done/total/message of long work."""
        ...


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    params: Mapping[str, Any] = field(default_factory=lambda: dict(NO_PARAMS))
    kind: Kind = Kind.READ
    mutating: bool = False
    positional: tuple[str, ...] = ()
    rest: str | None = None
    doc: str = ""
    stream: bool = False
    validator: Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cls = jsonschema.Draft202012Validator
        try:
            cls.check_schema(self.params)
        except jsonschema.SchemaError as e:
            raise ValueError(f"method {self.name}: invalid params schema: {e.message}") from e
        object.__setattr__(self, "validator", cls(self.params))

    def bind(self, params: list[Any] | dict[str, Any] | None) -> dict[str, Any]:
        """The params as an object, validated; raise InvalidParams saying what is wrong."""
        if params is None:
            params = {}
        elif isinstance(params, list):
            named = dict(zip(self.positional, params, strict=False))
            if self.rest is not None:
                named[self.rest] = params[len(self.positional) :]
            elif len(params) > len(self.positional):
                raise InvalidParams(
                    f"{self.name} takes at most {len(self.positional)} positional params",
                    errors=[{"path": "", "message": f"got {len(params)} positional params"}],
                )
            params = named
        try:
            found = list(self.validator.iter_errors(params))
        except RecursionError:
            # Error messages quote the value: a deeply nested one cannot be quoted.
            raise InvalidParams(
                f"Invalid params for {self.name}",
                errors=[{"path": "", "message": "value nests too deeply"}],
            ) from None
        errors = sorted(found, key=lambda e: [str(p) for p in e.path])
        if errors:
            raise InvalidParams(
                f"Invalid params for {self.name}",
                errors=[_describe(e) for e in errors[:MAX_REPORTED_ERRORS]],
            )
        bad = _unencodable(params, "")
        if bad is not None:
            raise InvalidParams(
                f"Invalid params for {self.name}",
                errors=[{"path": bad, "message": "text with a lone UTF-16 surrogate"}],
            )
        return params


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first string that has no UTF-8 form (a lone surrogate, which JSON's
    escapes allow); every layer below encodes text as UTF-8.  Depth is bounded by the
    validation above (a too deep value was refused there)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "/"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _unencodable(k, path) or _unencodable(v, f"{path}/{k}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unencodable(v, f"{path}/{i}")
            if found is not None:
                return found
    return None


def _describe(error: jsonschema.ValidationError) -> dict[str, str]:
    # The message can quote the whole offending value: keep answers small.
    message = error.message
    if len(message) > MAX_ERROR_TEXT:
        message = message[:MAX_ERROR_TEXT] + "..."
    return {"path": "/" + "/".join(str(p) for p in error.path), "message": message}


class MethodTable:
    """Name -> Method; later issues register their ``sandbox.*`` etc. methods here."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(self, method: Method) -> Method:
        if method.name in self._methods:
            raise ValueError(f"method {method.name} is already registered")
        if method.name.startswith("rpc."):
            raise ValueError(f"method {method.name}: names starting with rpc. are reserved")
        self._methods[method.name] = method
        return method

    def register(
        self,
        name: str,
        *,
        params: Mapping[str, Any] = NO_PARAMS,
        kind: Kind = Kind.READ,
        mutating: bool = False,
        positional: tuple[str, ...] = (),
        rest: str | None = None,
        doc: str = "",
        stream: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator form of ``add``."""

        def decorate(handler: Handler) -> Handler:
            # Without ``doc`` the handler's docstring describes the method (host.methods, docs).
            text = doc or " ".join((handler.__doc__ or "").split())
            method = Method(name, handler, params, kind, mutating, positional, rest, text, stream)
            self.add(method)
            return handler

        return decorate

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise MethodNotFound(method=name[:MAX_ERROR_TEXT]) from None

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def __len__(self) -> int:
        return len(self._methods)
