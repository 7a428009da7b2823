from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from wrennd import config


def test_defaults_and_derived_paths() -> None:
    s = config.load(path=None, env={})
    assert s.state_dir == Path("/var/lib/wrennd")
    assert s.socket_path == Path("/run/wrennd/wrennd.sock")
    assert s.kernel_path == Path("/var/lib/wrennd/kernels/vmlinux")
    assert s.memfiles_dir == Path("/var/lib/wrennd/memfiles")
    assert s.max_generations == 10
    assert s.prefetch_max_bytes == 0  # the sandbox's memory size


def test_file_then_env_override(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('state_dir = "/srv/w"\nmax_generations = 4\nlog_level = "debug"\n')
    s = config.load(
        path=f, env={"WRENND_MAX_GENERATIONS": "7", "WRENND_PREFETCH_MAX_BYTES": "1048576"}
    )
    assert s.prefetch_max_bytes == 1 << 20
    assert s.state_dir == Path("/srv/w")
    assert s.images_dir == Path("/srv/w/images")
    assert s.max_generations == 7
    assert s.log_level == "debug"


def test_config_path_from_env(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('host_network = "10.20.0.0/16"\n')
    s = config.load(env={"WRENND_CONFIG": str(f)})
    assert s.host_network == ipaddress.IPv4Network("10.20.0.0/16")


@pytest.mark.parametrize(
    ("toml", "key", "expected"),
    [
        ('state_dir = "relative/dir"', "state_dir", "absolute path"),
        ("max_generations = 0", "max_generations", "positive integer"),
        ('max_generations = "many"', "max_generations", "positive integer"),
        ('log_level = "loud"', "log_level", "one of debug"),
        ('host_network = "10.11.0.0/24"', "host_network", "/16 or larger"),
        ('storage_backend = "zfs"', "storage_backend", "one of auto"),
        ("use_jailer = 3", "use_jailer", "true or false"),
        ("jail_uid = 0", "jail_uid", "a positive uid"),
        ("jail_gid = 4294967296", "jail_gid", "a positive gid"),
        ('jail_cgroup = "a/b"', "jail_cgroup", "a cgroup name"),
        ('jail_chroot_base = "srv"', "jail_chroot_base", "absolute path"),
        ("prefetch_max_bytes = -1", "prefetch_max_bytes", "0 or a positive integer"),
        ("no_such_key = 1", "no_such_key", "a known key"),
    ],
)
def test_bad_values_name_key_value_and_expectation(
    tmp_path: Path, toml: str, key: str, expected: str
) -> None:
    f = tmp_path / "w.toml"
    f.write_text(toml + "\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(path=f, env={})
    assert e.value.key == key
    assert expected in str(e.value)
    assert str(f) in str(e.value)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(config.ConfigError, match=r"\$WRENND_UFFD_BATCH_BYTES"):
        config.load(path=None, env={"WRENND_UFFD_BATCH_BYTES": "-5"})


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="readable TOML"):
        config.load(path=tmp_path / "missing.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("state_dir = \n")
    with pytest.raises(config.ConfigError, match="valid TOML"):
        config.load(path=bad, env={})


def test_settings_are_immutable() -> None:
    s = config.load(path=None, env={})
    with pytest.raises(AttributeError):
        s.state_dir = Path("/x")  # type: ignore[misc]


def test_jail_settings_follow_use_jailer(tmp_path: Path) -> None:
    from wrennd.sandbox.environment import VmmChoice, jail_settings

    sim = VmmChoice(Path("/opt/venv/bin/fcsim"), True, "no kvm")
    s = config.load(env={"WRENND_STATE_DIR": str(tmp_path)})
    assert jail_settings(s, sim) is None
    s = config.load(env={"WRENND_STATE_DIR": str(tmp_path), "WRENND_USE_JAILER": "true"})
    with pytest.raises(ValueError, match="jailer_bin"):
        jail_settings(s, sim)
    env = {"WRENND_USE_JAILER": "true", "WRENND_JAILER_BIN": "/opt/venv/bin/fcsim-jailer"}
    s = config.load(env={"WRENND_STATE_DIR": str(tmp_path), **env, "WRENND_JAIL_UID": "7"})
    jail = jail_settings(s, sim)
    assert jail is not None and (jail.uid, jail.gid) == (7, 64000)
    assert jail.exec_file == Path("/opt/venv/bin/fcsim-firecracker"), "named *firecracker*"
    assert jail.chroot_base == tmp_path / "jail", "beside the state it hard-links from"
    fc = VmmChoice(Path("/usr/local/bin/firecracker"), False, "kvm")
    real = jail_settings(s, fc)
    assert real is not None and real.exec_file == fc.binary
