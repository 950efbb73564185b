from __future__ import annotations

from pathlib import Path

import pytest

from duplex.config import EchoConfig, HubConfig, ListenerConfig, config_file_path, resolve
from duplex.errors import ConfigError


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "duplex.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set() -> None:
    config = resolve(EchoConfig, section="echo", env={})
    assert config == EchoConfig()
    assert config.port == 7007
    assert config.backlog == 4096


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = _file(tmp_path, '[echo]\nport = 1111\nmodel = "thread"\ngrace = 9.5\n')
    env = {"DUPLEX_ECHO_PORT": "2222", "DUPLEX_ECHO_MODEL": "pool"}
    config = resolve(EchoConfig, section="echo", flags={"port": 3333}, env=env, file=file)
    assert config.port == 3333  # flag
    assert config.model == "pool"  # env beats file
    assert config.grace == 9.5  # file beats default
    assert config.backlog == 4096  # default


def test_none_flags_count_as_not_given() -> None:
    config = resolve(
        EchoConfig, section="echo", flags={"port": None}, env={"DUPLEX_ECHO_PORT": "9"}
    )
    assert config.port == 9


@pytest.mark.parametrize(
    ("text", "bad"),
    [("yes", True), ("no", False), ("1", True), ("off", False)],
)
def test_booleans_from_env(text: str, bad: bool) -> None:
    config = resolve(EchoConfig, section="echo", env={"DUPLEX_ECHO_UDP": text})
    assert config.udp is bad


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="DUPLEX_ECHO_PORT: expected an integer"):
        resolve(EchoConfig, section="echo", env={"DUPLEX_ECHO_PORT": "seven"})


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    file = _file(tmp_path, "[echo]\nprot = 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        resolve(EchoConfig, section="echo", env={}, file=file)


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    file = _file(tmp_path, "[echo\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve(EchoConfig, section="echo", env={}, file=file)


def test_validation_runs_after_merge() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        resolve(EchoConfig, section="echo", flags={"port": 70000}, env={})
    with pytest.raises(ConfigError, match="negative"):
        ListenerConfig(backlog=-1)
    with pytest.raises(ConfigError, match="udp"):
        EchoConfig(udp=True, unix="/tmp/x.sock")


def test_config_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUPLEX_CONFIG_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("DUPLEX_CONFIG", raising=False)
    assert config_file_path() is None
    with pytest.raises(ConfigError, match="does not exist"):
        config_file_path(tmp_path / "missing.toml")
    file = _file(tmp_path, "")
    monkeypatch.setenv("DUPLEX_CONFIG", str(file))
    assert config_file_path() == file


def test_a_certificate_and_a_key_turn_tls_on() -> None:
    # Before: without --tls files, the hub ignored them and spoke plain TCP.
    assert HubConfig(tls_cert="c.pem", tls_key="k.pem").tls == "files"
    assert HubConfig(tls="off", tls_cert="c.pem", tls_key="k.pem").tls == "files"
    assert HubConfig().tls == "off"
    with pytest.raises(ConfigError, match="needs --tls-cert and --tls-key"):
        HubConfig(tls_cert="c.pem")
    with pytest.raises(ConfigError, match="self-signed makes its own certificate"):
        HubConfig(tls="self-signed", tls_key="k.pem")
