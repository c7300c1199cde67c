"""How a config value is refused: ConfigError, naming the key, the value and the rule.

Every config object (the nets', augment's, the model's and the data's, and the checks that
span groups in hdr.config) says no in these words.
"""

from typing import Any


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and the rule."""


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {rule}.")


def choice(key: str, value: str, choices: Any) -> None:
    require(value in choices, key, value, f"choose one of {', '.join(choices)}")


def positive_ints(key: str, values: list[int], example: str) -> None:
    ok = len(values) > 0 and all(v >= 1 for v in values)
    require(ok, key, values, f"give one or more positive sizes, e.g. {example}")


def fraction(key: str, value: float) -> None:
    require(0 <= value < 1, key, value, "must be in [0, 1)")


def ints(value: Any, n: int, least: int) -> bool:
    """An int >= least, or a list of n of them."""
    values = value if isinstance(value, list) else [value]
    return (len(values) == n or not isinstance(value, list)) and all(
        type(v) is int and v >= least for v in values
    )
