"""Training steps (steps.py): data parallel semantics, per-device draws, distillation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autoslim_jax import defaults
from autoslim_jax import models
from autoslim_jax import parallel
from autoslim_jax import steps
from conftest import backend_compiles


def _supernet_config(num_sandwich=3):
  cfg = defaults.get_default_config().supernet
  cfg.num_sandwich = num_sandwich
  cfg.base_learning_rate = 0.1
  cfg.base_batch_size = cfg.batch_size = 16
  cfg.weight_decay = 1e-4
  return cfg


def _batch(network, size, seed=0):
  key_x, key_y = jax.random.split(jax.random.key(seed))
  return {'image': jax.random.normal(key_x, (size,) + network.input_shape),
          'label': jax.random.randint(key_y, (size,), 0, network.num_classes)}


@pytest.fixture(scope='module')
def tiny_mbv1():
  """For the checks of the step's semantics, which do not depend on the model: MobileNet v1's
  14 layers compile about 3x faster than the tiny MobileNet v2."""
  return models.create_network('mobilenet_v1', layout='cifar', width_mult=0.5, image_size=8)


def test_step_on_8_devices_equals_single_device_computation(tiny_mbv1):
  tiny_network = tiny_mbv1
  assert jax.device_count() == 8
  space = tiny_network.channel_space()
  cfg = _supernet_config()
  make_tx = lambda params: steps.create_optimizer(cfg, tiny_network, params)
  mesh = parallel.make_mesh()
  state = steps.create_train_state(tiny_network, jax.random.key(0), make_tx)
  batch = _batch(tiny_network, 32)

  step = steps.make_train_step(tiny_network, space, cfg, mesh=mesh)
  inputs = steps.step_inputs(0.1, seed=3)
  # The step donates its input state: give it a copy.
  new_state, metrics = step(parallel.replicate(jax.tree_util.tree_map(jnp.copy, state), mesh),
                            parallel.shard_batch(batch, mesh), inputs)

  # The same thing by hand on one device: each device's sub-networks on its 4 examples.
  module = tiny_network.supernet()

  @jax.jit
  def grad_fn(params, batch_stats, images, labels, configs):
    return jax.grad(functools.partial(
        steps.sandwich_loss, module=module, images=images, labels=labels, configs=configs,
        num_classes=tiny_network.num_classes, label_smoothing=cfg.label_smoothing),
                    has_aux=True)(params, batch_stats)

  grads_per_device, stats_per_device = [], []
  for device in range(8):
    configs = steps.sandwich_configs(space, steps.device_key(3, state.step, device), 3)
    part = slice(4 * device, 4 * device + 4)
    grads, aux = grad_fn(state.params, state.batch_stats, batch['image'][part],
                         batch['label'][part], configs)
    grads_per_device.append(grads)
    stats_per_device.append(aux[-1])
  mean_grads = jax.tree_util.tree_map(lambda *g: sum(g) / 8, *grads_per_device)
  expected = steps.apply_scaled_gradients(
      state, mean_grads, jnp.float32(0.1),
      batch_stats=jax.tree_util.tree_map(lambda *s: sum(s) / 8, *stats_per_device))

  assert float(metrics['finite']) == 1.0
  # Tolerance relative to the largest update: a few BatchNorm biases (those of projections read
  # only through a 1x1 conv and BatchNorm, which removes any constant shift) have a gradient
  # that is zero in exact arithmetic, and both sides compute float32 noise for it.
  largest_update = max(float(jnp.max(jnp.abs(new - old))) for new, old in zip(
      jax.tree_util.tree_leaves(expected.params), jax.tree_util.tree_leaves(state.params)))
  for got, want in zip(jax.tree_util.tree_leaves(new_state.params),
                       jax.tree_util.tree_leaves(expected.params)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * largest_update)
  for got, want in zip(jax.tree_util.tree_leaves(new_state.batch_stats),
                       jax.tree_util.tree_leaves(expected.batch_stats)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert int(new_state.step) == 1

  # Later steps train other configs on every device with the same compiled program.
  sharded = parallel.shard_batch(batch, mesh)
  before = backend_compiles()
  for _ in range(3):
    new_state, metrics = step(new_state, sharded, inputs)
  jax.block_until_ready(metrics)
  draw = lambda at_step, device: tuple(int(v) for c in steps.sandwich_configs(
      space, steps.device_key(3, at_step, device), 3) for v in c.values())
  draws = {draw(at_step, device) for at_step in range(4) for device in range(8)}
  assert len(draws) == 4 * 8
  assert backend_compiles() == before
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_fused_sandwich_equals_members_one_after_another():
  """The one-pass (vmapped) sandwich computes the same losses, gradients and BatchNorm
  statistics as applying the members in turn. In float64: in float32 the tiny test net's
  BatchNorm over 4 images of 1x1 features amplifies the rounding of a differently ordered conv
  sum to percents of the gradient."""
  with jax.enable_x64(True):
    network = models.create_network('mobilenet_v1', layout='cifar', width_mult=0.5,
                                     image_size=8, dtype=jnp.float64)
    space = network.channel_space()
    variables = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64),
                                       network.init(jax.random.key(0), batch_size=2))
    batch = _batch(network, 4)
    configs = steps.sandwich_configs(space, jax.random.key(3), 4)

    @functools.partial(jax.jit, static_argnums=0)
    def loss_and_grads(fused):
      return jax.value_and_grad(functools.partial(
          steps.sandwich_loss, module=network.supernet(), images=batch['image'].astype(
              jnp.float64), labels=batch['label'], configs=configs, num_classes=10,
          label_smoothing=0.1, fused=fused), has_aux=True)(variables['params'],
                                                           variables['batch_stats'])

    (fused_total, (fused_losses, _, fused_stats)), fused_grads = loss_and_grads(True)
    (total, (losses, _, stats)), grads = loss_and_grads(False)
  np.testing.assert_allclose(fused_losses, losses, rtol=1e-12)
  for got, want in zip(jax.tree_util.tree_leaves((fused_grads, fused_stats)),
                       jax.tree_util.tree_leaves((grads, stats))):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_devices_draw_different_configs_and_the_same_again(tiny_network):
  space = tiny_network.channel_space()
  draws = [steps.sandwich_configs(space, steps.device_key(0, jnp.int32(5), d), 4)[2:]
           for d in range(8)]
  as_tuples = [tuple(int(v) for c in configs for v in c.values()) for configs in draws]
  assert len(set(as_tuples)) == 8
  again = steps.sandwich_configs(space, steps.device_key(0, jnp.int32(5), 3), 4)[2:]
  assert tuple(int(v) for c in again for v in c.values()) == as_tuples[3]
  other_step = steps.sandwich_configs(space, steps.device_key(0, jnp.int32(6), 3), 4)[2:]
  assert tuple(int(v) for c in other_step for v in c.values()) != as_tuples[3]


def _max_and_min_sandwich(network):
  """(space, variables, supernet module, batch of 4, [max config, min config]) of ``network``."""
  space = network.channel_space()
  return (space, network.init(jax.random.key(0)), network.supernet(), _batch(network, 4),
          [space.as_arrays(space.max_config()), space.as_arrays(space.min_config())])


def test_distillation_targets_carry_no_gradient_and_max_learns_labels(tiny_network):
  space, variables, module, batch, configs = _max_and_min_sandwich(tiny_network)

  def loss(params, which):
    total, (losses, *_) = steps.sandwich_loss(
        params, variables['batch_stats'], module, batch['image'], batch['label'], configs,
        tiny_network.num_classes, 0.1)
    return losses[which]

  # The min network's loss must not move the max network's logits through the teacher: its
  # gradient reaches only weights the min network uses.
  # Jitted: eagerly, every small op compiles on its own (minutes on CPU).
  loss = jax.jit(loss, static_argnums=1)
  grads = jax.jit(jax.grad(loss), static_argnums=1)(variables['params'], 1)
  kernel = grads['last']['conv']['kernel']
  assert np.all(np.asarray(kernel[..., space.min_config()['last']:]) == 0)
  # The max network's loss is the label loss (float32 rounding: the sandwich runs the members in
  # one batched pass, which orders the conv sums differently).
  logits = jax.jit(lambda v, x, c: module.apply(v, x, c, train=True, mutable=['batch_stats'])[0])(
      variables, batch['image'], configs[0])
  want = optax.softmax_cross_entropy(
      logits, optax.smooth_labels(jax.nn.one_hot(batch['label'], 10), 0.1)).mean()
  np.testing.assert_allclose(loss(variables['params'], 0), want, rtol=2e-5)


def test_without_inplace_distillation_every_member_learns_the_labels(tiny_network):
  _, variables, module, batch, configs = _max_and_min_sandwich(tiny_network)

  @jax.jit
  def member_losses(params):
    losses = {}
    for distill in (True, False):
      _, (losses[distill], *_) = steps.sandwich_loss(
          params, variables['batch_stats'], module, batch['image'], batch['label'], configs,
          tiny_network.num_classes, 0.1, inplace_distillation=distill)
    min_logits = module.apply(variables, batch['image'], configs[1], train=True,
                              mutable=['batch_stats'])[0]
    return losses, min_logits

  losses, min_logits = member_losses(variables['params'])
  labels = optax.smooth_labels(jax.nn.one_hot(batch['label'], 10), 0.1)
  np.testing.assert_allclose(losses[False][1],
                             optax.softmax_cross_entropy(min_logits, labels).mean(), rtol=2e-5)
  np.testing.assert_allclose(losses[False][0], losses[True][0], rtol=1e-6)  # the max: labels
  assert abs(float(losses[False][1]) - float(losses[True][1])) > 1e-3  # the min: not the teacher

def test_weight_decay_skips_depthwise_batchnorm_and_biases(tiny_network):
  variables = tiny_network.init(jax.random.key(0))
  mask = steps.weight_decay_mask(tiny_network, variables['params'])
  assert mask['stem']['conv']['kernel'] is True
  assert mask['block3']['depthwise']['conv']['kernel'] is False
  assert mask['block3']['project']['bn']['scale'] is False
  assert mask['classifier']['dense']['kernel'] is True
  assert mask['classifier']['dense']['bias'] is False


def test_learning_rate_schedules():
  cfg = defaults.get_default_config().retrain
  cfg.update(dict(base_learning_rate=0.1, batch_size=512, base_batch_size=256, warmup_epochs=1.0))
  cfg.schedule = 'step'  # ResNet's: x0.1 at epochs 30, 60, 90 of 100 (after a 1-epoch warm-up)
  step = steps.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=1000)
  np.testing.assert_allclose([float(step(s)) for s in (0, 5, 10, 299, 310, 610, 910, 999)],
                             [0.0, 0.1, 0.2, 0.2, 0.02, 0.002, 0.0002, 0.0002], rtol=1e-5)
  cfg.schedule = 'cosine'
  cosine = steps.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=1000)
  assert float(cosine(10)) == pytest.approx(0.2) and float(cosine(1000)) == pytest.approx(0.0)
  cfg.schedule = 'exponential'
  with pytest.raises(ValueError,
                     match="unknown schedule 'exponential'; valid: linear, cosine, step"):
    steps.learning_rate_schedule(cfg, steps_per_epoch=10, total_steps=1000)
