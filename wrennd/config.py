"""The daemon's settings: one immutable object from a TOML file plus environment overrides.

Sources, later ones winning: built-in defaults, the TOML file (``--config``,
else ``$WRENND_CONFIG``, else /etc/wrennd/wrennd.toml when it exists), then
``WRENND_<KEY>`` environment variables (``WRENND_STATE_DIR=/srv/wrennd``).
Every path the daemon touches is derived here so nothing else hard-codes one.
A bad value fails at load time with the key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("/etc/wrennd/wrennd.toml")
ENV_PREFIX = "WRENND_"
LOG_LEVELS = ("debug", "info", "warning", "error")
STORAGE_BACKENDS = ("auto", "devicemapper", "reflink", "copy")
TTL_ACTIONS = ("pause", "destroy")
KSM_MODES = ("off", "clones", "all")


class ConfigError(ValueError):
    """A setting has a value the daemon cannot use."""

    def __init__(self, key: str, value: object, expected: str, source: str) -> None:
        super().__init__(f"config {key}={value!r} (from {source}): expected {expected}")
        self.key = key
        self.value = value
        self.expected = expected
        self.source = source


def _path(v: object) -> Path:
    if not isinstance(v, str | Path) or not str(v):
        raise TypeError
    p = Path(v)
    if not p.is_absolute():
        raise ValueError
    return p


def _opt_path(v: object) -> Path | None:
    return None if v in ("", None) else _path(v)


def _pos_int(v: object) -> int:
    if isinstance(v, bool):
        raise TypeError
    i = int(v) if isinstance(v, str) else v
    if not isinstance(i, int) or i <= 0:
        raise ValueError
    return i


def _nonneg_int(v: object) -> int:
    if isinstance(v, bool):
        raise TypeError
    i = int(v) if isinstance(v, str) else v
    if not isinstance(i, int) or i < 0:
        raise ValueError
    return i


def _bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return v.lower() in ("1", "true", "yes", "on")
    raise ValueError


def _choice(*choices: str) -> Callable[[object], str]:
    def parse(v: object) -> str:
        if not isinstance(v, str) or v.lower() not in choices:
            raise ValueError
        return v.lower()

    return parse


def _network16(v: object) -> ipaddress.IPv4Network:
    net = ipaddress.IPv4Network(str(v), strict=True)
    if net.prefixlen > 16:
        raise ValueError
    return net


def _jail_id(v: object) -> int:
    # A jailed VMM must not run as root: that is what the jail is for.
    n = _pos_int(v)
    if n >= 1 << 32:
        raise ValueError
    return n


def _cgroup_name(v: object) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v) or v in (".", ".."):
        raise ValueError
    return v


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError
    return v


def _name_prefix(v: object) -> str:
    # Namespace and link names are built from it: short, and not ending in a digit.
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{0,7}[A-Za-z_.-]", v):
        raise ValueError
    return v


def _nft_name(v: object) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", v):
        raise ValueError
    return v


@dataclasses.dataclass(frozen=True)
class HttpAddress:
    """Where the HTTP console listens: a TCP host and port, or a Unix socket path."""

    host: str | None = None
    port: int = 0
    path: Path | None = None

    @property
    def loopback(self) -> bool:
        return self.path is not None or ipaddress.ip_address(self.host or "").is_loopback


def parse_http_listen(v: object) -> HttpAddress | None:
    """``127.0.0.1:PORT``, ``[::1]:PORT`` or ``unix:/path``; empty means off."""
    if not isinstance(v, str):
        raise TypeError
    if not v:
        return None
    if v.startswith("unix:"):
        return HttpAddress(path=_path(v[len("unix:") :]))
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):([0-9]{1,5})", v)
    if m is None:
        raise ValueError
    host = m.group(1) or m.group(2)
    ip = ipaddress.ip_address(host)  # ValueError for a name: no lookups, no surprises
    if (m.group(1) is not None) != (ip.version == 6):
        raise ValueError
    port = int(m.group(3))
    if not 0 < port < 65536:
        raise ValueError
    return HttpAddress(host=str(ip), port=port)


def _http_listen(v: object) -> str:
    parse_http_listen(v)
    assert isinstance(v, str)
    return v


def _setting(default: Any, parse: Callable[[object], Any], expected: str) -> Any:
    return dataclasses.field(default=default, metadata={"parse": parse, "expected": expected})


@dataclasses.dataclass(frozen=True)
class Settings:
    state_dir: Path = _setting(Path("/var/lib/wrennd"), _path, "an absolute path")
    run_dir: Path = _setting(Path("/run/wrennd"), _path, "an absolute path")
    firecracker_bin: Path = _setting(Path("/usr/local/bin/firecracker"), _path, "an absolute path")
    jailer_bin: Path | None = _setting(None, _opt_path, "an absolute path or empty")
    # None means state_dir/kernels/vmlinux.
    kernel: Path | None = _setting(None, _opt_path, "an absolute path or empty")
    log_level: str = _setting("info", _choice(*LOG_LEVELS), f"one of {', '.join(LOG_LEVELS)}")
    socket_group: str = _setting("wrennd", _str, "a group name")
    max_generations: int = _setting(10, _pos_int, "a positive integer")
    uffd_batch_bytes: int = _setting(64 * 1024, _pos_int, "a positive integer (bytes)")
    # 0: the sandbox's memory size (the map never exceeds what was resident at the pause)
    prefetch_max_bytes: int = _setting(0, _nonneg_int, "0 or a positive integer (bytes)")
    # Check each block against its generation's CRC32C as the UFFD engine installs it.
    verify_pages: bool = _setting(True, _bool, "true or false")
    # Background scrub of paused sandboxes' and templates' generations: seconds
    # between passes (0: off) and the read rate it keeps below.
    scrub_interval: int = _setting(6 * 3600, _nonneg_int, "0 or a positive integer (seconds)")
    scrub_rate_bytes: int = _setting(32 << 20, _pos_int, "a positive integer (bytes per second)")
    storage_backend: str = _setting(
        "auto", _choice(*STORAGE_BACKENDS), f"one of {', '.join(STORAGE_BACKENDS)}"
    )
    host_network: ipaddress.IPv4Network = _setting(
        ipaddress.IPv4Network("10.11.0.0/16"), _network16, "an IPv4 network of /16 or larger"
    )
    # Per-slot /30 point-to-point links between the host and each sandbox namespace.
    veth_network: ipaddress.IPv4Network = _setting(
        ipaddress.IPv4Network("10.12.0.0/16"), _network16, "an IPv4 network of /16 or larger"
    )
    # Names of the per-sandbox namespaces/links and of the nftables table; and the
    # namespace that plays the host (empty: the daemon's own). Tests and demos
    # use these to keep their sandboxes apart from a production daemon's.
    network_prefix: str = _setting(
        "wrn-", _name_prefix, "1-8 characters of letters, digits, _.- not ending in a digit"
    )
    nft_table: str = _setting("wrennd", _nft_name, "an nftables table name")
    host_netns: Path | None = _setting(None, _opt_path, "an absolute path or empty")
    ttl_action: str = _setting("pause", _choice(*TTL_ACTIONS), "pause or destroy")
    # Guest memory the running sandboxes may declare together, in percent of the host's
    # RAM; a create or resume beyond it is refused as resource_exhausted (memory is
    # touched lazily, so more than 100 is a deliberate overcommit).
    memory_overcommit_percent: int = _setting(100, _pos_int, "a positive integer (percent)")
    use_jailer: bool = _setting(False, _bool, "true or false")
    # Seconds a guest call (exec without its own timeout, files, processes) may take
    # before it ends with guest_unavailable; an exec's own timeout extends it.
    guest_timeout: int = _setting(300, _pos_int, "a positive integer (seconds)")
    # Seconds a file transfer may go without progress (no bytes in or out, a transfer id
    # never used) before it is aborted and its id expires.
    transfer_idle_timeout: int = _setting(60, _pos_int, "a positive integer (seconds)")
    # The jailed VMM's uid/gid; its chroots (None: state_dir/jail, the same filesystem
    # so files are hard-linked in); its cgroup v2 parent.
    jail_uid: int = _setting(64000, _jail_id, "a positive uid")
    jail_gid: int = _setting(64000, _jail_id, "a positive gid")
    jail_chroot_base: Path | None = _setting(None, _opt_path, "an absolute path or empty")
    jail_cgroup: str = _setting("wrennd", _cgroup_name, "a cgroup name ([A-Za-z0-9_.-])")
    # JSON-RPC server limits (wrennd.rpc): per message, per connection, per daemon.
    rpc_max_message_bytes: int = _setting(4 << 20, _pos_int, "a positive integer (bytes)")
    rpc_max_inflight: int = _setting(64, _pos_int, "a positive integer (calls per connection)")
    rpc_max_connections: int = _setting(4096, _pos_int, "a positive integer")
    # Seconds SIGTERM may take (finish lifecycle calls, pause sandboxes); keep it below
    # the unit's TimeoutStopSec.
    shutdown_timeout: int = _setting(150, _pos_int, "a positive integer (seconds)")
    # What SIGTERM does with running sandboxes: pause them all, or keep them running for
    # the next daemon to adopt (an upgrade); `wrennctl host restart` keeps them either way.
    on_stop: str = _setting("pause", _choice("pause", "keep"), "pause or keep")
    # After a resume, install the rest of guest memory in the background and detach the
    # UFFD engine (the VM then outlives the daemon), or serve pages on demand only.
    uffd_fill: str = _setting("background", _choice("background", "lazy"), "background or lazy")
    # Bytes per second that fill (and prefetch) may install; 0: as fast as it goes.
    uffd_fill_rate_bytes: int = _setting(0, _nonneg_int, "a non-negative integer (bytes/s)")
    # Under systemd, keep each serving engine's uffd in the service's fd store, so a
    # sandbox still filling survives a daemon crash (wrennd.sandbox.handover).
    uffd_handover: bool = _setting(True, _bool, "true or false")
    # The HTTP console (wrennd.web): off unless an address is given.  Only loopback
    # addresses and Unix sockets unless http_allow_remote: the console controls every
    # sandbox, and plain HTTP off the host exposes its token to the network.
    http_listen: str = _setting(
        "", _http_listen, "empty, 127.0.0.1:PORT, [::1]:PORT (any IP literal) or unix:/path"
    )
    http_allow_remote: bool = _setting(False, _bool, "true or false")
    # Memory sharing between VMMs (docs/operations.md, "Memory sharing (KSM)"): which VMMs
    # start with their memory mergeable; whether the daemon may run ksmd and set its scan
    # rate (else the host's admin does); the seconds one full scan of the mergeable VMMs'
    # memory should take, and a ceiling on pages per 20 ms batch (ksmd's CPU).
    ksm: str = _setting("off", _choice(*KSM_MODES), "off, clones or all")
    ksm_manage: bool = _setting(False, _bool, "true or false")
    ksm_scan_period_s: int = _setting(20, _pos_int, "a positive integer (seconds)")
    ksm_max_pages_to_scan: int = _setting(4000, _pos_int, "a positive integer (pages)")

    # Derived paths (DESIGN.md §3).
    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def kernel_path(self) -> Path:
        return self.kernel or self.state_dir / "kernels" / "vmlinux"

    @property
    def memfiles_dir(self) -> Path:
        return self.state_dir / "memfiles"

    @property
    def sandboxes_dir(self) -> Path:
        return self.state_dir / "sandboxes"

    @property
    def templates_dir(self) -> Path:
        return self.state_dir / "templates"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "wrennd.sock"

    @property
    def http_address(self) -> HttpAddress | None:
        return parse_http_listen(self.http_listen)

    @property
    def http_token_path(self) -> Path:
        return self.run_dir / "http.token"


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _parse(key: str, raw: object, source: str) -> Any:
    field = FIELDS[key]
    try:
        return field.metadata["parse"](raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(key, raw, field.metadata["expected"], source) from e


def _config_file(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return explicit
    if env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, the config file and the environment."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = _config_file(path, env)
    if file is not None:
        try:
            with file.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError("config", str(file), "a readable TOML file", e.strerror or "") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", str(file), f"valid TOML ({e})", str(file)) from e
        for key, raw in doc.items():
            if key not in FIELDS:
                raise ConfigError(key, raw, f"a known key ({', '.join(FIELDS)})", str(file))
            values[key] = _parse(key, raw, str(file))
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in FIELDS:
            values[key] = _parse(key, raw, f"${name}")
    settings = Settings(**values)
    address = settings.http_address
    if address is not None and not address.loopback and not settings.http_allow_remote:
        raise ConfigError(
            "http_listen",
            settings.http_listen,
            "a loopback address or unix:/path (set http_allow_remote = true to listen "
            "beyond this host, behind TLS or a tunnel)",
            "the settings",
        )
    return settings
