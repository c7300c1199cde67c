"""The one helper train.py needs: build every object of a config group."""

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each `_target_` entry of a group such as `callbacks` or `logger`."""
    objects = []
    for name, node in (group or {}).items():
        if isinstance(node, DictConfig) and "_target_" in node:
            log.info("Instantiating %s <%s>", name, node._target_)
            objects.append(instantiate(node))
    return objects
