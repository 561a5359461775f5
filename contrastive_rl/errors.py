"""The errors the package raises for what a user can fix: a config value, a run that went non-finite."""


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite; the message names the update and the values."""
