"""The config model, its TOML loading, validation messages, default file and live reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from crisp.config import Config, ConfigError, LiveConfig, config_path, load, parse, render_default


def test_no_file_means_built_in_defaults() -> None:
    config = load(None)
    assert config == Config()
    assert config.socket == "/run/crisp/crisp.sock"
    assert config.runtime("").runtime_path == "runc"


def test_default_file_loads_back_to_the_same_config() -> None:
    text = render_default()
    assert parse(text) == Config()
    for section in (
        "[runtimes.runc]",
        "[registries]",
        "[images]",
        "[pod]",
        "[cni]",
        "[streaming]",
        "[metrics]",
    ):
        assert section in text
    commented = [line for line in text.splitlines() if line.startswith("#")]
    assert len(commented) > 30


def test_full_file_is_read_into_typed_values() -> None:
    config = parse(
        """
        log_level = "debug"
        cgroup_manager = "systemd"
        default_runtime = "kata"
        [runtimes.kata]
        runtime_path = "/usr/bin/kata-runtime"
        privileged_without_host_devices = true
        [registries]
        insecure = ["registry.local:5000"]
        [registries.mirrors]
        "docker.io" = ["https://mirror.local", "http://127.0.0.1:5000"]
        [images]
        pull_progress_timeout = 60
        """
    )
    assert config.cgroup_manager == "systemd"
    assert config.runtime("").runtime_path == "/usr/bin/kata-runtime"
    assert config.runtime("kata").privileged_without_host_devices
    assert config.runtime("runc").runtime_path == "runc"
    assert config.registries.mirrors["docker.io"][1] == "http://127.0.0.1:5000"
    assert config.images.pull_progress_timeout == 60.0
    assert isinstance(config.images.pull_progress_timeout, float)


def test_runtime_tables_add_to_the_built_in_runc() -> None:
    config = parse('[runtimes.logged]\nruntime_path = "/usr/local/bin/logged-runc"\n')
    assert sorted(config.runtimes) == ["logged", "runc"]
    redefined = parse('[runtimes.runc]\nruntime_path = "/opt/runc"\n')
    assert redefined.runtime("runc").runtime_path == "/opt/runc"


def test_unknown_runtime_handler_lists_the_configured_ones() -> None:
    with pytest.raises(KeyError, match=r"'gvisor' is not configured \(configured: runc\)"):
        Config().runtime("gvisor")


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('log_level = "loud"', "log_level", "must be one of debug, info, warning, error"),
        ("socket = 3", "socket", "must be a string, not an integer"),
        ('socket = "relative.sock"', "socket", "must be an absolute path"),
        ("[metrics]\nport = 70000", "metrics.port", "must be a port number"),
        (
            "[images]\nmax_concurrent_downloads = 0",
            "images.max_concurrent_downloads",
            "must be at least 1",
        ),
        ('[cni]\nbin_dirs = "/usr/lib/cni"', "cni.bin_dirs", "must be a list, not a string"),
        ("[cni]\ncolour = 1", "cni.colour", "unknown option"),
        ('default_runtime = "kata"', "default_runtime", "'kata' is not one of the configured"),
        ("[runtimes.Runc]", "runtimes.Runc", "a handler name is lower-case"),
        (
            '[registries.mirrors]\n"docker.io" = ["mirror.local"]',
            "registries.mirrors.docker.io[0]",
            "must be an http:// or https:// URL",
        ),
        (
            '[registries.mirror_credentials]\n"r.example" = ["https://mirror.lan"]',
            "registries.mirror_credentials.r.example[0]",
            "must be a host[:port] (no scheme or path)",
        ),
        ('[cni]\ndefault_subnet = "10.0.0.0/33"', "cni.default_subnet", "not a network"),
        (
            '[runtimes.runc]\nruntime_type = "vm"',
            "runtimes.runc.runtime_type",
            "must be one of oci",
        ),
    ],
)
def test_validation_errors_name_file_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, "/etc/crisp/crisp.toml")
    assert f"/etc/crisp/crisp.toml: {key}: {reason}" in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse('log_level = "loud"\nlog_format = "xml"\nbogus = 1')
    assert len(caught.value.problems) == 3


def test_broken_toml_is_reported_with_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^f.toml: not valid TOML"):
        parse("[unclosed", "f.toml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRISP_CONFIG", str(tmp_path / "env.toml"))
    assert config_path("/explicit.toml") == Path("/explicit.toml")
    assert config_path(None) == tmp_path / "env.toml"


def test_reload_applies_live_options_only(tmp_path: Path) -> None:
    path = tmp_path / "crisp.toml"
    path.write_text('log_level = "info"\n')
    live = LiveConfig(load(path), path)
    seen: list[Config] = []
    live.subscribe(seen.append)
    path.write_text(
        'log_level = "debug"\nsocket = "/run/other.sock"\n[cni]\nbin_dirs = ["/opt/cni/bin"]\n'
    )
    result = live.reload()
    assert sorted(result.applied) == ["cni.bin_dirs", "log_level"]
    assert result.needs_restart == ["socket"]
    assert live.current.log_level == "debug"
    assert live.current.cni.bin_dirs == ["/opt/cni/bin"]
    assert live.current.socket == "/run/crisp/crisp.sock"
    assert seen == [live.current]


def test_reload_of_a_broken_file_keeps_the_running_config(tmp_path: Path) -> None:
    path = tmp_path / "crisp.toml"
    path.write_text('log_level = "warning"\n')
    live = LiveConfig(load(path), path)
    path.write_text('log_level = "shouty"\n')
    with pytest.raises(ConfigError):
        live.reload()
    assert live.current.log_level == "warning"


def test_registry_tls_and_hosts_dir_options() -> None:
    from crisp.config import ConfigError, parse

    config = parse('[registries]\nconfig_path = "/etc/containerd/certs.d"\n'
                   'auth_file = "/root/.docker/config.json"\n'
                   '[registries.tls."r.example:5000"]\nca_file = "/ca.crt"\n'
                   'cert_file = "/c.pem"\ninsecure_skip_verify = false\n')
    assert config.registries.tls["r.example:5000"].ca_file == "/ca.crt"
    assert config.registries.config_path == "/etc/containerd/certs.d"
    try:
        parse('[registries.tls."r"]\nkey_file = "k"\ncolour = 1\n')
    except ConfigError as error:
        assert "registries.tls.r.colour" in str(error)
    else:
        raise AssertionError("an unknown TLS option was accepted")
    try:
        parse('[registries.tls."r"]\nkey_file = "/k"\n')
    except ConfigError as error:
        assert "needs cert_file" in str(error)
    else:
        raise AssertionError("key_file without cert_file was accepted")
