"""One error table: every sandbox-layer error reaches the API with a code, a data object and a
wrennctl exit status, and the SDK has an exception class for it."""

from __future__ import annotations

from wrennd.cli.exits import Exit, exit_for_code
from wrennd.rpc import errors
from wrennd.rpc.client import RemoteError
from wrennd.sandbox import errors as sandbox_errors
from wrennd.sdk import errors as sdk


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_lifecycle_error_has_an_api_error_with_data() -> None:
    for cls in _subclasses(sandbox_errors.LifecycleError):
        api = errors.BY_TYPE.get(cls.code)
        assert api is not None, f"{cls.__name__}.code {cls.code!r} has no API error"
        made = errors.from_code(cls.code, "why", {"id": "sb-000000000000"})
        body = made.to_json()
        assert body["data"] == {"type": cls.code, "id": "sb-000000000000"}


def test_every_application_error_has_an_exit_status_and_an_sdk_class() -> None:
    for cls in errors.APPLICATION_ERRORS:
        assert exit_for_code(cls.code) not in (Exit.OK, Exit.FAILURE), cls.type
        raised = sdk.translate(RemoteError(cls.code, "m", {"type": cls.type}))
        assert type(raised) is sdk.BY_CODE[cls.code] and raised.data["type"] == cls.type
    assert isinstance(sdk.translate(RemoteError(-32602, "bad", {})), sdk.BadRequest)
    assert isinstance(sdk.translate(RemoteError(-32603, "bug", {})), sdk.DaemonError)
