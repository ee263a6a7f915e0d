"""Which endpoints serve a registry: mirrors first, HTTPS unless insecure or local."""

from crisp.config import Config, LiveConfig, RegistryConfig
from crisp.images.registry import Endpoint, endpoints_for


def live(**registries: object) -> LiveConfig:
    return LiveConfig(Config(registries=RegistryConfig(**registries)), None)  # type: ignore[arg-type]


def test_https_by_default_and_docker_hub_api_host() -> None:
    assert endpoints_for("quay.io", live()) == [Endpoint("https://quay.io", False)]
    assert endpoints_for("docker.io", live()) == [Endpoint("https://registry-1.docker.io", False)]


def test_local_registries_are_plain_http() -> None:
    assert endpoints_for("127.0.0.1:5000", live()) == [Endpoint("http://127.0.0.1:5000", False)]
    assert endpoints_for("localhost", live()) == [Endpoint("http://localhost", False)]


def test_insecure_registries_try_unverified_https_then_http() -> None:
    config = live(insecure=["registry.lan:5000"])
    assert endpoints_for("registry.lan:5000", config) == [
        Endpoint("https://registry.lan:5000", False, verify_tls=False),
        Endpoint("http://registry.lan:5000", False),
    ]
    assert endpoints_for("other.lan:5000", config) == [Endpoint("https://other.lan:5000", False)]


def test_mirrors_come_first_in_order() -> None:
    config = live(mirrors={"docker.io": ["https://m1.example/", "http://m2.example:5000"]})
    assert endpoints_for("docker.io", config) == [
        Endpoint("https://m1.example", True),
        Endpoint("http://m2.example:5000", True),
        Endpoint("https://registry-1.docker.io", False),
    ]


def test_config_reload_is_seen() -> None:
    config = live()
    assert len(endpoints_for("docker.io", config)) == 1
    config.current = Config(registries=RegistryConfig(mirrors={"docker.io": ["https://m"]}))
    assert len(endpoints_for("docker.io", config)) == 2
