# Type surface of the cffi extension built from native/ (see native/build_native.py).
# cffi objects are dynamically typed; the typed wrappers live next to their users.
from typing import Any

ffi: Any
lib: Any
