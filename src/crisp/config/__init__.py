"""crisp's configuration: the typed model, the TOML file, and live reload."""

from crisp.config.live import LiveConfig, ReloadResult
from crisp.config.load import ConfigError, config_path, load, parse, render, render_default
from crisp.config.model import (
    CNIConfig,
    Config,
    ImageConfig,
    MetricsConfig,
    PodConfig,
    RegistryConfig,
    RegistryTLS,
    RuntimeHandler,
    StreamingConfig,
)

__all__ = [
    "CNIConfig",
    "Config",
    "ConfigError",
    "ImageConfig",
    "LiveConfig",
    "MetricsConfig",
    "PodConfig",
    "RegistryConfig",
    "RegistryTLS",
    "ReloadResult",
    "RuntimeHandler",
    "StreamingConfig",
    "config_path",
    "load",
    "parse",
    "render",
    "render_default",
]
