"""The files of a run, in a local folder or on a bucket (``gs://...``, through etils.epath).

Only the main process writes (every process computes the same outputs); every process reads,
so a multi-host run needs a workdir all hosts see.
"""

from __future__ import annotations

import json
import os
from typing import Any

from etils import epath

from autoslim_jax import parallel


def is_local(path: str) -> bool:
  return '://' not in str(path)


def absolute(path: str) -> str:
  """An absolute local path; a URL as it is."""
  return os.path.abspath(path) if is_local(path) else str(path)


def write_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` so that a crash never leaves half a file: locally to a temporary file and
  renamed; on a bucket in one upload (an object appears whole or not at all). Only the main
  process writes."""
  if not parallel.is_main_process():
    return
  target = epath.Path(absolute(path))
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    target.write_bytes(data)
    return
  temporary = f'{target}.tmp{os.getpid()}'
  with open(temporary, 'wb') as f:
    f.write(data)
  os.replace(temporary, target)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def is_dir(path: str) -> bool:
  return epath.Path(path).is_dir()


def read_bytes(path: str) -> bytes:
  return epath.Path(path).read_bytes()


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def empty_folder(path: str) -> None:
  """Deletes everything in ``path`` (main process)."""
  if not parallel.is_main_process():
    return
  for child in epath.Path(path).iterdir():
    if child.is_dir():
      child.rmtree()
    else:
      child.unlink()


def move(source: str, destination: str) -> None:
  """Renames (main process); on a bucket a copy and a delete."""
  if parallel.is_main_process():
    epath.Path(destination).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(source).rename(destination)
