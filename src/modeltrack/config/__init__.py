"""Settings (:mod:`.settings`), built from ``MODELTRACK_*`` variables and flags by the option machinery
(:mod:`.options`), checked across settings (:mod:`.checks`), and turned into ``--flags`` (:mod:`.cli`)."""

from .cli import add_arguments, provider_epilog
from .options import MIB, OTHER_VARIABLES, PER_PROVIDER, PROVIDERS, ConfigError, check_base_url, convert, env_name
from .settings import Settings, check_names, known_names

__all__ = [
    "MIB",
    "OTHER_VARIABLES",
    "PER_PROVIDER",
    "PROVIDERS",
    "ConfigError",
    "Settings",
    "add_arguments",
    "check_base_url",
    "check_names",
    "convert",
    "env_name",
    "known_names",
    "provider_epilog",
]
