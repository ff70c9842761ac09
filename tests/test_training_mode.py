"""A plain network's training mode is found whatever its argument is called, and a network the
package cannot switch, or whose training graph its steps cannot run, is refused before anything
trains, naming the layer and the fix (issue 27, points 1 and 2)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoslim_jax import export
from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax import tracing
from autoslim_jax import training_mode
from conftest import REPO, SHORT_SCHEDULE, run

NETWORKS = os.path.join(REPO, 'tests', 'mode_networks.py')


def network(name, mode_argument=''):
  return models.create_network(f'{NETWORKS}:{name}', mode_argument, image_size=8, in_channels=1)


@pytest.mark.parametrize('name, argument, mode_argument', [
    ('training_argument', {'training': True}, ''),
    ('deterministic_argument', {'deterministic': False}, ''),
    ('eval_mode_argument', {'eval_mode': False}, 'not eval_mode')])
def test_mode_argument_found_by_its_name_and_batchnorm_trains(name, argument, mode_argument):
  """``training``, ``deterministic`` (inverted) and a name the config gives put BatchNorm on
  batch statistics in the masked supernet's training mode: its running averages move (before:
  the module got no mode argument, and every running mean stayed exactly 0)."""
  net = network(name, mode_argument)
  assert training_mode.mode_kwargs(net.module, True) == argument
  supernet = net.supernet()
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1)) * 3 + 1
  variables = supernet.init(jax.random.key(0), images)
  config = net.channel_space().min_config()
  _, updates = supernet.apply(variables, images, config, train=True, mutable=['batch_stats'])
  mean = updates['batch_stats']['bn1']['mean']
  assert float(jnp.abs(mean[:config['conv1']]).min()) > 0
  np.testing.assert_array_equal(mean[config['conv1']:], 0)  # inactive channels kept
  # Inference mode reads the running averages: the logits do not depend on the batch.
  logits = supernet.apply(variables, images, config)
  np.testing.assert_allclose(supernet.apply(variables, images[:1], config), logits[:1],
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name, message', [
    ('no_mode_argument', r"bn1: this BatchNorm normalises with its running averages in "
     r"training mode \(NoModeArgument.__call__ takes no mode argument \(one of train, training"),
    ('pmap_batchnorm', r"bn1: nn.BatchNorm\(axis_name='batch'\) reduces over a pmap axis .* "
     r"remove axis_name"),
    ('with_dropout', r'drop: dropout \(rate 0.2\) in training mode: random layers are not '
     r'supported yet'),
    ('no_batchnorm', r'NoBatchNorm has no BatchNorm'),
])
def test_networks_the_steps_cannot_run_are_refused_naming_the_layer(name, message):
  with pytest.raises(tracing.TracingError, match=message):
    network(name)


def test_a_mode_argument_of_another_name_needs_the_config_to_name_it():
  """Found by its name alone, ``eval_mode`` is not found: refused, pointing at
  config.mode_argument; a name the module's ``__call__`` lacks, a malformed value, or a value
  for a zoo network (which switches itself) is refused naming what is valid."""
  with pytest.raises(tracing.TracingError, match=r"bn1: this BatchNorm normalises with its "
                     r"running averages in training mode \(EvalModeArgument.__call__ takes no "
                     r"mode argument .*give it as config.mode_argument"):
    network('eval_mode_argument')
  with pytest.raises(ValueError, match=r"mode_argument 'eval': EvalModeArgument.__call__ takes "
                     r"no argument 'eval' \(it takes \['x', 'eval_mode'\]\)"):
    network('eval_mode_argument', 'eval')
  with pytest.raises(ValueError, match=r"mode_argument 'not eval mode': give the name of the "
                     r"argument of __call__ .* 'not NAME'"):
    network('eval_mode_argument', 'not eval mode')
  with pytest.raises(ValueError, match=r"mode_argument 'train' is for a plain flax module; "
                     r"this model is an autoslim_jax Network, which switches its own mode"):
    models.create_network('mobilenet_v2', 'train', layout='cifar')
  # Given, the name is used as given (True in training): a BatchNorm it leaves in inference.
  with pytest.raises(tracing.TracingError, match=r"bn1: .* running averages in training mode "
                     r"\(EvalModeArgument called with eval_mode=True\)") as given:
    network('eval_mode_argument', 'eval_mode')
  assert 'config.mode_argument' not in str(given.value)  # it was given


def test_a_mode_argument_the_config_names_travels_with_the_network(tmp_path):
  """The whole pipeline from the command line with ``--config.mode_argument``; the export
  records it, so that ``load_slim`` and ``profile`` (with the latency worker, a fresh process)
  rebuild the network from the export's model.json alone."""
  workdir = tmp_path / 'w'
  run('autoslim_jax.main', f'--config={NETWORKS}', f'--workdir={workdir}',
      f'--config.model={NETWORKS}:eval_mode_argument', '--config.mode_argument=not eval_mode',
      *SHORT_SCHEDULE)
  (target,) = json.loads((workdir / 'results.json').read_text())['targets']
  directory = target['autoslim']['export']
  module, variables, description = export.load_slim(directory)
  assert description['mode_argument'] == 'not eval_mode'
  images = np.ones((2, 8, 8, 1), np.float32)
  assert module.apply(variables, images, train=False).shape == (2, 10)
  result = run('autoslim_jax.profile', f'--channels={directory}/model.json', '--latency',
               '--json')
  measured = json.loads(result.stdout)
  assert measured['channels'] == description['channels'] and measured['latency_ms'] > 0
  # The network's BatchNorms trained: the exported running means are not their initial 0.
  assert float(np.abs(variables['batch_stats']['bn1']['mean']).max()) > 0


def test_refused_on_the_command_line_before_training(tmp_path):
  """The pipeline stops with the reason in one line and nothing trained."""
  workdir = tmp_path / 'w'
  result = run('autoslim_jax.main', f'--config={NETWORKS}', f'--workdir={workdir}',
               check=False)
  assert result.returncode != 0
  assert "error: model" in result.stderr and "axis_name='batch'" in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (workdir / 'supernet').exists()


def test_plain_logits_are_float32_in_bfloat16():
  """The loss and the distillation teacher of a bfloat16 plain network are computed in float32,
  as the zoo's are (before, a plain network's logits stayed bfloat16), masked and slim."""
  net = models.create_network(f'{os.path.join(REPO, "tests", "plain_cnn.py")}:plain_cnn',
                              image_size=8, in_channels=1, dtype=jnp.bfloat16)
  images = jnp.ones((2, 8, 8, 1))
  variables = net.supernet().init(jax.random.key(0), images)
  assert net.supernet().apply(variables, images).dtype == jnp.float32
  config = net.uniform_config(0.5)
  slim = plain_network.slim_variables(net.traced, variables, config)
  assert net.slim_module(config).apply(slim, images).dtype == jnp.float32
