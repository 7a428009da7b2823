"""wrennctl's exit statuses: one per error class of the API."""

from __future__ import annotations

import enum

from wrennd.rpc import errors


class Exit(enum.IntEnum):
    """wrennctl's exit status, one per error class (``exec`` exits with the remote code)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    NOT_RUNNING = 3
    PERMISSION = 4
    CONNECTION = 5
    BAD_REQUEST = 6
    INTERNAL = 7
    SHUTTING_DOWN = 8
    SANDBOX_NOT_FOUND = 10
    WRONG_STATE = 11
    TEMPLATE_IN_USE = 12
    RESOURCE_EXHAUSTED = 13
    VMM_FAILURE = 14
    GUEST_FAILURE = 15
    NOT_FOUND = 16
    IMAGE_IN_USE = 17
    STORAGE_FAILURE = 18
    SNAPSHOT_CORRUPT = 19
    GUEST_UNAVAILABLE = 20
    INTERRUPTED = 130


_EXIT_FOR_CODE = {
    errors.PARSE_ERROR: Exit.BAD_REQUEST,
    errors.INVALID_REQUEST: Exit.BAD_REQUEST,
    errors.METHOD_NOT_FOUND: Exit.BAD_REQUEST,
    errors.INVALID_PARAMS: Exit.BAD_REQUEST,
    errors.MESSAGE_TOO_LARGE: Exit.BAD_REQUEST,
    errors.INTERNAL_ERROR: Exit.INTERNAL,
    errors.SHUTTING_DOWN: Exit.SHUTTING_DOWN,
    errors.SANDBOX_NOT_FOUND: Exit.SANDBOX_NOT_FOUND,
    errors.WRONG_STATE: Exit.WRONG_STATE,
    errors.TEMPLATE_IN_USE: Exit.TEMPLATE_IN_USE,
    errors.RESOURCE_EXHAUSTED: Exit.RESOURCE_EXHAUSTED,
    errors.VMM_FAILURE: Exit.VMM_FAILURE,
    errors.GUEST_FAILURE: Exit.GUEST_FAILURE,
    errors.NOT_FOUND: Exit.NOT_FOUND,
    errors.IMAGE_IN_USE: Exit.IMAGE_IN_USE,
    errors.STORAGE_FAILURE: Exit.STORAGE_FAILURE,
    errors.SNAPSHOT_CORRUPT: Exit.SNAPSHOT_CORRUPT,
    errors.GUEST_UNAVAILABLE: Exit.GUEST_UNAVAILABLE,
}


def exit_for_code(code: int) -> Exit:
    return _EXIT_FOR_CODE.get(code, Exit.FAILURE)
