"""containerd hosts.toml parsing, crisp's TLS table, and which of the two wins."""

from pathlib import Path

import pytest

from crisp.config import Config, LiveConfig, RegistryConfig, RegistryTLS
from crisp.errors import InvalidArgument
from crisp.images.auth import Credentials, from_auth_file, normalize_host
from crisp.images.endpoints import Endpoint, endpoints_for, parse_hosts_toml, tls_reason


def live(**registries: object) -> LiveConfig:
    return LiveConfig(Config(registries=RegistryConfig(**registries)), None)  # type: ignore[arg-type]


def test_hosts_toml_every_key(tmp_path: Path) -> None:
    text = """
server = "https://registry.example:5000"
ca = "root.crt"

[host."https://m1.example/v2"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  client = [["/c/a.cert", "/c/a.key"], ["b.pem", ""]]
  [host."https://m1.example/v2".header]
    x-one = "1"
    x-two = ["a", "b"]

[host."http://m2.example:8080/custom/api"]
  capabilities = ["pull"]
  override_path = true
  ca = ["/x.crt", "y.crt"]
  client = "/c/both.pem"
"""
    hosts = parse_hosts_toml(text, "registry.example:5000", tmp_path, "hosts.toml")
    assert hosts.server == Endpoint("https://registry.example:5000", False,
                                    ca_files=(str(tmp_path / "root.crt"),),
                                    capabilities=frozenset({"pull", "resolve"}),
                                    source="hosts.toml")
    first, second = hosts.mirrors
    assert first.base_url == "https://m1.example" and not first.verify_tls
    assert first.client_certs == (("/c/a.cert", "/c/a.key"), (str(tmp_path / "b.pem"), ""))
    assert first.headers == (("x-one", "1"), ("x-two", "a, b"))
    assert second.url("/v2/a/manifests/x") == "http://m2.example:8080/custom/api/a/manifests/x"
    assert second.capabilities == frozenset({"pull"}) and not second.can("resolve")
    assert second.ca_files == ("/x.crt", str(tmp_path / "y.crt"))
    assert second.client_certs == (("/c/both.pem", ""),)
    assert first.url("/v2/a/blobs/d") == "https://m1.example/v2/a/blobs/d"


@pytest.mark.parametrize("text", ['server = 5', '[host."ftp://x"]', '[host."https://x"]\n'
                                  'capabilities = "pull"', '[host."https://x"]\nca = 1'])
def test_bad_hosts_toml_names_the_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"hosts\.toml"):
        parse_hosts_toml(text, "r.example", tmp_path, "hosts.toml")


def test_own_table_wins_and_hosts_dir_fills_in(tmp_path: Path) -> None:
    (tmp_path / "r.example").mkdir()
    (tmp_path / "r.example" / "hosts.toml").write_text(
        '[host."https://hm.example"]\nca = "/h.crt"\n')
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."https://dm.example"]\n')
    only_dir = live(config_path=str(tmp_path))
    assert [e.base_url for e in endpoints_for("r.example", only_dir)] == [
        "https://hm.example", "https://r.example"]
    assert [e.base_url for e in endpoints_for("other.example", only_dir)] == [
        "https://dm.example", "https://other.example"]
    both = live(config_path=str(tmp_path), mirrors={"r.example": ["https://own.example"]},
                tls={"hm.example": RegistryTLS(ca_file="/own.crt")})
    assert [e.base_url for e in endpoints_for("r.example", both)] == [
        "https://own.example", "https://r.example"]
    # a host named in [registries.tls] takes crisp's TLS settings over the hosts.toml ones
    mirror = endpoints_for("r.example", live(config_path=str(tmp_path), tls={
        "hm.example": RegistryTLS(ca_file="/own.crt")}))[0]
    assert mirror.ca_files == ("/own.crt",)


def test_docker_certs_dir_without_hosts_toml(tmp_path: Path) -> None:
    host = tmp_path / "r.example:5000"
    host.mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (host / name).write_text("")
    (registry,) = endpoints_for("r.example:5000", live(config_path=str(tmp_path)))
    assert registry.ca_files == (str(host / "ca.crt"),)
    assert registry.client_certs == ((str(host / "client.cert"), str(host / "client.key")),)


def test_tls_table_makes_local_registries_https() -> None:
    (registry,) = endpoints_for("127.0.0.1:5000", live(tls={"127.0.0.1:5000": RegistryTLS()}))
    assert registry.base_url == "https://127.0.0.1:5000"


def test_tls_reason_words() -> None:
    class Verify(Exception):
        def __init__(self, code: int, message: str):
            self.verify_code = code
            self.verify_message = message

    assert "unknown authority" in tls_reason(Verify(20, "unable to get local issuer"))
    assert "name mismatch" in tls_reason(Verify(62, "Hostname mismatch"))
    assert "expired" in tls_reason(Verify(10, "certificate has expired"))


def test_server_address_scoping_and_hub_names() -> None:
    hub = Credentials(username="u", password="p", server_address="https://index.docker.io/v1/")
    assert hub.is_for("registry-1.docker.io", "docker.io")
    assert not hub.is_for("mirror.example", "docker.io")
    unscoped = Credentials(username="u", password="p")
    assert unscoped.is_for("quay.io", "quay.io") and not unscoped.is_for("m.example", "quay.io")
    assert normalize_host("HTTPS://Registry.Example:5000/v2/") == "registry.example:5000"
    assert "p" not in repr(Credentials(username="u", password="secret-p")).replace("password", "")


def test_auth_file_longest_key_wins() -> None:
    text = ('{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOng="},'
            ' "quay.io": {"username": "q", "password": "1"},'
            ' "quay.io/team": {"identitytoken": "refresh"}}}')
    hub = from_auth_file(text, "docker.io", "library/busybox", "auth.json")
    assert hub is not None and hub.user_password() == ("hub", "x")
    team = from_auth_file(text, "quay.io", "team/app", "auth.json")
    assert team is not None and team.identity_token == "refresh"
    other = from_auth_file(text, "quay.io", "else/app", "auth.json")
    assert other is not None and other.username == "q"
    assert from_auth_file(text, "ghcr.io", "a/b", "auth.json") is None
    with pytest.raises(InvalidArgument, match=r"auth\.json"):
        from_auth_file("{", "x", "y", "auth.json")


def test_registries_conf_parsing_and_matching(tmp_path: Path) -> None:
    from crisp.images import registries_conf as rc

    conf_file = tmp_path / "registries.conf"
    conf_file.write_text(
        'unqualified-search-registries = ["a.example"]\n'
        '[[registry]]\nprefix = "q.example"\nlocation = "q.example"\ninsecure = true\n'
        '[[registry]]\nprefix = "*.corp.example"\n'
        '[[registry.mirror]]\nlocation = "m.example/cache"\n'
        '[[registry]]\nlocation = "d.example"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "dm.example"\n')
    (tmp_path / "registries.conf.d").mkdir()
    (tmp_path / "registries.conf.d" / "10.conf").write_text(
        '[[registry]]\nprefix = "q.example"\nlocation = "q2.example"\n')
    conf = rc.load(str(conf_file))
    assert conf is not None and conf.search == ("a.example",)
    q = rc.find(conf, "q.example", "team/app")
    assert q is not None and q.location == "q2.example" and not q.insecure  # drop-in won
    wild = rc.find(conf, "reg.corp.example", "x/y")
    assert wild is not None
    assert rc.places(wild, "reg.corp.example", "x/y", False) == [
        rc.Place("m.example", "cache", False, True), rc.Place("reg.corp.example", "x/y", False,
                                                               False)]
    digest_only = rc.find(conf, "d.example", "a")
    assert digest_only is not None
    assert [p.host for p in rc.places(digest_only, "d.example", "a", False)] == ["d.example"]
    assert [p.host for p in rc.places(digest_only, "d.example", "a", True)] == [
        "dm.example", "d.example"]
    assert rc.find(conf, "other.example", "a") is None
    assert rc.load(str(tmp_path / "missing.conf")) is None


@pytest.mark.parametrize("text", ['[registries.search]\nregistries = ["x"]',
                                  '[[registry]]\ninsecure = true',
                                  '[[registry]]\nprefix = "*.x"\nlocation = "y"',
                                  '[[registry]]\nlocation = "x"\n[[registry.mirror]]\n'
                                  'location = "m"\npull-from-mirror = "sometimes"'])
def test_bad_registries_conf_names_the_file(text: str) -> None:
    from crisp.images import registries_conf as rc

    with pytest.raises(InvalidArgument, match=r"registries\.conf"):
        rc.parse(text, "/etc/containers/registries.conf")


def test_config_show_describes_every_configured_host(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from crisp.cli.daemon import main

    (tmp_path / "certs.d" / "r.example:5000").mkdir(parents=True)
    (tmp_path / "certs.d" / "r.example:5000" / "hosts.toml").write_text(
        '[host."https://m.example"]\ncapabilities = ["pull"]\n')
    (tmp_path / "reg.conf").write_text('[[registry]]\nlocation = "bad.example"\nblocked = true\n')
    (tmp_path / "crisp.toml").write_text(
        f'[registries]\nconfig_path = "{tmp_path}/certs.d"\n'
        f'registries_conf = "{tmp_path}/reg.conf"\n'
        '[registries.tls."q.example"]\nca_file = "/ca.crt"\n'
        '[registries.mirrors]\n"p.example" = ["https://n.example", "https://o.example"]\n'
        '[registries.mirror_credentials]\n"p.example" = ["o.example"]\n')
    assert main(["--config", str(tmp_path / "crisp.toml"), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "bad.example is blocked" in out
    assert "https://q.example capabilities=pull,resolve verify ca=/ca.crt" in out
    assert "https://m.example (mirror) capabilities=pull" in out
    assert "https://m.example (mirror) capabilities=pull verify credentials=anonymous" in out
    assert "https://n.example (mirror) capabilities=pull,resolve verify credentials=anonymous" \
        in out
    assert "https://o.example (mirror) capabilities=pull,resolve verify credentials=shared" in out
    assert "https://p.example capabilities=pull,resolve verify\n" in out
