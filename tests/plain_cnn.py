"""A small CNN of one's own as a plain flax.linen module, and a config that runs the whole
pipeline on it: the tests' plain network (tests/test_plain_pipeline.py).

It has each structure the tracer must couple: a residual addition (stem and res2 share a unit),
a depthwise conv (its input's unit), a squeeze-and-excite gate (se_expand joins the gated unit)
and a channel concatenation read by a conv (fuse counts its input from two units).

  python -m autoslim_jax.main --config=tests/plain_cnn.py --workdir=W
"""

import functools
import importlib.util
import os

import flax.linen as nn
import jax.numpy as jnp
import ml_collections


class PlainCNN(nn.Module):
  num_classes: int = 10
  dtype: jnp.dtype = jnp.float32  # float64 in the tests that compare in float64

  @nn.compact
  def __call__(self, x, train=False):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype, param_dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.dtype)
    x = nn.relu(norm(name='stem_bn')(conv(16, (3, 3), name='stem')(x)))
    y = nn.relu(norm(name='res1_bn')(conv(16, (3, 3), name='res1')(x)))
    y = norm(name='res2_bn')(conv(16, (3, 3), name='res2')(y))
    x = nn.relu(x + y)  # residual: res2 joins stem's unit
    h = nn.relu(norm(name='expand_bn')(conv(32, (1, 1), name='expand')(x)))
    h = nn.relu(norm(name='dw_bn')(
        conv(32, (3, 3), strides=2, feature_group_count=32, name='dw')(h)))
    s = jnp.mean(h, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Conv(8, (1, 1), dtype=self.dtype, param_dtype=self.dtype, name='se_reduce')(s))
    h = h * nn.sigmoid(nn.Conv(32, (1, 1), dtype=self.dtype, param_dtype=self.dtype,
                                name='se_expand')(s))  # the gate joins expand's unit
    a = nn.relu(norm(name='branch_a_bn')(conv(16, (1, 1), name='branch_a')(h)))
    b = nn.relu(norm(name='branch_b_bn')(conv(24, (3, 3), name='branch_b')(h)))
    x = jnp.concatenate([a, b], axis=-1)
    x = nn.relu(norm(name='fuse_bn')(conv(32, (1, 1), name='fuse')(x)))
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype,
                    name='head')(jnp.mean(x, axis=(1, 2)))


def plain_cnn(image_size=8, in_channels=1, num_classes=10, dtype=jnp.float32):
  """The factory: a plain module at its max widths; image_size and in_channels give the input
  shape it is traced on."""
  del image_size, in_channels  # the module works on any image size and channel count
  return PlainCNN(num_classes, dtype)


def get_config():
  """The quickstart's recipe (configs/quickstart.py) on this network."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs', 'quickstart.py')
  spec = importlib.util.spec_from_file_location('_quickstart_config', path)
  quickstart = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(quickstart)
  config = quickstart.get_config()
  config.model = f'{os.path.abspath(__file__)}:plain_cnn'
  config.model_kwargs = ml_collections.ConfigDict(
      {'image_size': 8, 'in_channels': 1, 'num_classes': 10})
  config.min_width = 2 / 6  # k_min = 2 of 6 groups of the plain module (its own 1.0x)
  config.search.targets.macs_of_width = (0.6,)
  return config
