"""Every shipped config loads and passes the checks; unknown keys are refused."""

import glob
import importlib.util
import os

import pytest

from autoslim_jax import defaults
from autoslim_jax import pipeline
from conftest import REPO

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('path', CONFIG_FILES, ids=os.path.basename)
def test_config_is_valid_and_documented(path):
  module = _load(path)
  config = module.get_config()
  defaults.check_config(config)
  network, space = pipeline.build_network(config)
  assert len(space) == len(network.unit_names)
  for word in ('Command:', 'Hardware:', 'Run time:', 'Expected'):
    assert word in module.__doc__, f'{path} docstring lacks {word!r}'


def test_shipped_configs():
  networks = ('mbv2', 'mbv1', 'mnasnet', 'resnet50')
  assert {os.path.basename(p) for p in CONFIG_FILES} >= {
      'quickstart.py', *(f'{n}.py' for n in networks), *(f'cifar10_{n}.py' for n in networks)}


def test_unknown_keys_are_refused_with_a_suggestion():
  config = defaults.get_default_config()
  config.supernet.batchsize = 64
  with pytest.raises(ValueError, match=r"unknown config key supernet.'batchsize' \(did you mean "
                                       r"supernet.'batch_size'\?\)"):
    defaults.check_config(config)
  config = defaults.get_default_config()
  config.model_kwargs.width = 1.0
  with pytest.raises(ValueError, match='model_kwargs.width is not an argument of mobilenet_v2'):
    defaults.check_config(config)
  config = defaults.get_default_config()
  config.supernet.num_sandwich = 1
  with pytest.raises(ValueError, match='num_sandwich must be >= 2'):
    defaults.check_config(config)

