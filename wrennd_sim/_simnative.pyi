# Type surface of the cffi extension built from native/sim/ (see native/sim/build_sim.py).
# cffi objects are dynamically typed; the typed wrappers live next to their users.
from typing import Any

ffi: Any
lib: Any
