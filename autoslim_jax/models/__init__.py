"""The network registry: ``create_network(name, ...)`` builds a slimmable ``Network``."""

from __future__ import annotations

import difflib
from typing import Callable

from autoslim_jax.models.base import LayerRecord, Network, trace_layers
from autoslim_jax.models.mobilenet_v2 import mobilenet_v2

MODELS: dict[str, Callable[..., Network]] = {
    'mobilenet_v2': mobilenet_v2,
}


def register(name: str, factory: Callable[..., Network]) -> None:
  """Adds a user's network factory (returning a ``Network``) under ``name``."""
  MODELS[name] = factory


def create_network(name: str, **kwargs) -> Network:
  """Builds the registered network ``name``; keyword arguments go to its factory."""
  if name not in MODELS:
    close = difflib.get_close_matches(name, MODELS, n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise ValueError(f'unknown model {name!r}{hint}; known models: {sorted(MODELS)}')
  return MODELS[name](**kwargs)


__all__ = ['LayerRecord', 'MODELS', 'Network', 'create_network', 'register', 'trace_layers']
