r"""Prints the MACs, params and memory of a network config.

  python -m autoslim_jax.profile --model=mobilenet_v2 --width=1.0
  python -m autoslim_jax.profile --model=mobilenet_v2 \
      --channels='[8,8,96,16,96,16,96,24,144,24,144,24,144,56,288,56,288,56,288,56,288,96,432,96,432,96,864,240,1440,240,960,240,1440,480,1920,1000]'
  python -m autoslim_jax.profile --model=mobilenet_v2 --layout=cifar --width=0.75 --json
  python -m autoslim_jax.profile --model=mobilenet_v2 --channels=searched.json --per_layer
  python -m autoslim_jax.profile --model=mobilenet_v2 --width=1.0 --latency
  python -m autoslim_jax.profile --model=mobilenet_v2 --width=1.0 --latency \
      --latency_backend=onnxruntime --latency_threads=1
  python -m autoslim_jax.profile --model=resnet50 --published=2G --per_layer
  python -m autoslim_jax.profile --model=my_cnn.py:my_cnn --width=1.0 --per_layer

``--channels`` takes a list in the official ``channel_num_list`` layout or a JSON object
{unit: channels} (a search result or an exported ``model.json``, whose ``channels`` are read;
a ``model.json`` also gives the network, its model and arguments, unless ``--model`` is given),
inline or as a file; ``--published`` one of the paper's AutoSlim networks
(``autoslim_jax/published.py``). ``--model`` is a registered name (mobilenet_v1, mobilenet_v2,
mnasnet, resnet50) or a user's factory, ``module:function`` or ``file.py:function`` (returning a
plain flax module or a ``Network``). The table lists the units (with ``--per_layer``, the layers
writing each: for a plain module, the units its trace found) and, with ``--per_layer``, every
layer.
Definitions of the resources: ``autoslim_jax/resources.py``. ``--latency`` adds the measured
median time of one image through the slim network on one CPU thread (``autoslim_jax/latency.py``):
in XLA:CPU, or with ``--latency_backend=onnxruntime`` its ONNX model in onnxruntime.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags

from autoslim_jax import export
from autoslim_jax import latency as latency_lib
from autoslim_jax import models
from autoslim_jax import plain_network
from autoslim_jax import published as published_lib
from autoslim_jax import resources as resources_lib

_MODEL = flags.DEFINE_string(
    'model', 'mobilenet_v2', f'Network: one of {sorted(models.MODELS)}, or your own as '
    'module:function or path/to/file.py:function.')
_MODE_ARGUMENT = flags.DEFINE_string(
    'mode_argument', '', "A plain module's training-mode argument, as config.mode_argument: "
    "'NAME' (True in training) or 'not NAME' (True in inference); '' finds it by its name.")
_LAYOUT = flags.DEFINE_string('layout', 'imagenet', 'Network layout: imagenet or cifar.')
_WIDTH = flags.DEFINE_float('width', None, 'Uniform width multiplier, e.g. 1.0.')
_CHANNELS = flags.DEFINE_string(
    'channels', None, 'Channel list (official channel_num_list layout) or JSON object '
    '{unit: channels}, inline or a file path.')
_PUBLISHED = flags.DEFINE_string(
    'published', None, 'One of the published AutoSlim networks of --model, by its MACs: '
    f'{ {m: published_lib.names(m) for m in published_lib.PUBLISHED} }.')
_MAX_WIDTH = flags.DEFINE_float(
    'max_width', None, 'Max width multiplier of the supernet the channels must fit '
    '(default: the network\'s, 1.5x for MobileNet v2; at least --width).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, 'Input size (default: the layout\'s).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, 'Classes (default: the layout\'s).')
_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of a table.')
_PER_LAYER = flags.DEFINE_bool('per_layer', False, 'Also print every layer\'s channels and MACs.')
_LATENCY = flags.DEFINE_bool(
    'latency', False, 'Also measure latency_ms: the median wall time of the slim network at '
    'batch 1 on one CPU thread (compiles it first: seconds).')
_LATENCY_BACKEND = flags.DEFINE_string(
    'latency_backend', 'jax', 'Where --latency measures: jax (XLA:CPU) or onnxruntime (the '
    "slim net's ONNX model; pip install -e '.[onnx]').")
_LATENCY_THREADS = flags.DEFINE_integer(
    'latency_threads', 1, 'CPU threads of the onnxruntime latency backend (jax: 1).')


def read_channels(text: str) -> Any:
  """The channel argument's JSON value, read from a file if ``text`` names one."""
  source = 'the --channels value'
  if os.path.exists(text):
    source = text
    with open(text) as f:
      text = f.read()
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{source} is neither a file nor JSON ({e}); give a list such as '
                     '[8, 8, 96, ...] or an object {"stem": 16, ...}') from None
  return value


def config_from_value(network: models.Network, value: Any) -> dict[str, int]:
  if isinstance(value, dict) and isinstance(value.get('channels'), dict):
    value = value['channels']  # a search result or an exported model.json
  if isinstance(value, dict):
    return network.channel_space().validate(value)
  if isinstance(value, list):
    return network.config_from_list(value)
  raise ValueError(f'channels must be a list or a JSON object, got {type(value).__name__}')


def exported_network(value: Any) -> tuple[str, dict[str, Any], str] | None:
  """(model, model_kwargs, mode_argument) of an exported ``model.json``'s contents, which
  describe their own network (a 1-channel 8x8 digits net, say); None for any other value."""
  if isinstance(value, dict) and {'model', 'model_kwargs', 'channels'} <= set(value):
    return value['model'], dict(value['model_kwargs']), export.network_mode_argument(value)
  return None


def profile(model: str, layout: str = 'imagenet', width: float | None = None,
            channels: Any = None, max_width: float | None = None,
            image_size: int | None = None, num_classes: int | None = None,
            latency: bool = False, published: str | None = None,
            model_kwargs: Mapping[str, Any] | None = None, latency_backend: str = 'jax',
            latency_threads: int = 1, mode_argument: str = '') -> dict[str, Any]:
  """Resources of a uniform width, a channel config (list or dict) or a published AutoSlim
  network (``published``, e.g. '305M'), as a JSON-able dict.

  ``model_kwargs`` builds the network with exactly these arguments (an export's), in place of
  ``layout``, ``max_width``, ``image_size`` and ``num_classes``. ``latency`` adds
  ``latency_ms``, measured (``latency.LatencyMeter``, in ``latency_backend`` with
  ``latency_threads``) rather than counted. ``mode_argument``: ``config.mode_argument``.
  """
  if latency:
    latency_lib.check_backend(latency_backend, latency_threads)
  if sum(x is not None for x in (width, channels, published)) != 1:
    raise ValueError('give exactly one of a uniform width (--width), channels (--channels) or '
                     'a published network (--published)')
  if published is not None:
    channels = list(published_lib.get(model, published).channel_num_list)
    if max_width is None:
      max_width = published_lib.SUPERNET_WIDTH[model]
  if model_kwargs is not None:
    kwargs = dict(model_kwargs)
    network = models.create_network(model, mode_argument, **kwargs)
    max_width = network.max_width_mult
  else:
    kwargs = factory_kwargs(model, layout=layout, image_size=image_size,
                            num_classes=num_classes)
    network = models.create_network(model, mode_argument, **kwargs)
  wanted_max = max_width if max_width is not None else max(width or 0, network.max_width_mult)
  if wanted_max != network.max_width_mult:
    if (isinstance(network, plain_network.PlainNetwork)
        or 'width_mult' not in models.factory_parameters(model)):
      raise ValueError(f'model {model} is its own max network ({network.max_width_mult}x: a '
                       f'plain module, or a factory without width_mult); a width or --max_width '
                       f'of {wanted_max} is above it')
    kwargs['width_mult'] = wanted_max
    network = models.create_network(model, mode_argument, **kwargs)
  if width is not None:
    config = network.uniform_config(width)
  else:
    config = config_from_value(network, channels)
  result = {
      'model': network.name,
      'layout': kwargs.get('layout', layout) if 'layout' in models.factory_parameters(model)
                else None,
      'input_shape': list(network.input_shape),
      'num_classes': network.num_classes,
      'max_width': network.max_width_mult,
      'width': width,
      **resources_lib.ResourceModel(network)(config),
      'channels': config,
  }
  if latency:
    with latency_lib.LatencyMeter(model, kwargs, backend=latency_backend,
                                  threads=latency_threads, mode_argument=mode_argument) as meter:
      result['latency_ms'] = meter.measure(config)
    result['latency_backend'] = latency_backend
    result['latency_threads'] = latency_threads
  if network.official_layout is not None:
    result['channel_num_list'] = network.config_to_list(config)
  # A unit's layers: those writing it (a plain module's units are found by tracing it).
  result['units'] = [dict(unit=unit, channels=config[unit], max=network.max_widths[unit],
                          layers=['/'.join(l.path) for l in network.layers
                                  if unit in dict(resources_lib.output_segments(network, l))])
                     for unit in network.unit_names]
  result['layers'] = [dict(layer='/'.join(layer.path), kind=layer.kind,
                           **resources_lib.layer_resources(layer, config, network))
                      for layer in network.layers]
  # A plain network's params are counted from its variables: a BatchNorm that follows no layer
  # (pre-activation nets, DenseNet) belongs to no row, so a row of its own keeps the sum.
  rest = result['params'] - sum(row['params'] for row in result['layers'])
  if rest:
    result['layers'].append(dict(layer='(parameters of no layer)', kind='other', **{
        'in': 0, 'out': 0, 'macs': 0, 'params': rest}))
  return result


def factory_kwargs(model: str, **kwargs) -> dict[str, Any]:
  """The given arguments the model's factory takes (a user's network may lack ``layout``);
  None means the factory's default."""
  parameters = models.factory_parameters(model)
  unknown = [k for k, v in kwargs.items() if v is not None and k not in parameters]
  if unknown and not (unknown == ['layout'] and kwargs['layout'] == 'imagenet'):
    raise ValueError(f'model {model} takes no argument(s) {unknown}; its arguments: '
                     f'{sorted(parameters)}')
  return {k: v for k, v in kwargs.items() if v is not None and k in parameters}


def format_table(result: Mapping[str, Any], per_layer: bool = False) -> str:
  height, width, depth = result['input_shape']
  what = (f'uniform {result["width"]}x' if result['width'] is not None
          else 'channel config')
  lines = [
      f'model    {result["model"]} ('
      + (f'{result["layout"]} layout, ' if result['layout'] else '') + f'{height}x{width}x{depth}, '
      f'{result["num_classes"]} classes), {what} of the {result["max_width"]}x supernet',
      f'MACs     {result["macs"] / 1e6:10.2f} M  ({result["macs"]:,})',
      f'params   {result["params"] / 1e6:10.3f} M  ({result["params"]:,})',
      f'memory   {result["memory"] / 1e6:10.3f} M  ({result["memory"]:,} elements)',
  ]
  if 'latency_ms' in result:
    threads = result['latency_threads']
    lines.append(f'latency  {result["latency_ms"]:10.3f} ms (median at batch 1, '
                 f'{result["latency_backend"]}, {threads} CPU thread{"s" if threads > 1 else ""})')
  if 'channel_num_list' in result:
    lines.append(f'channel_num_list {json.dumps(result["channel_num_list"])}')
  lines.append(f'\n{"unit":28s} {"channels":>8s} {"max":>5s}' + ('  layers' if per_layer else ''))
  lines += [f'{u["unit"]:28s} {u["channels"]:8d} {u["max"]:5d}'
            + (f'  {", ".join(u["layers"])}' if per_layer else '') for u in result['units']]
  if per_layer:
    lines.append(f'\n{"layer":28s} {"kind":9s} {"in":>5s} {"out":>5s} {"MACs":>12s} '
                 f'{"params":>9s}')
    lines += [f'{r["layer"]:28s} {r["kind"]:9s} {r["in"]:5d} {r["out"]:5d} {r["macs"]:12,d} '
              f'{r["params"]:9,d}' for r in result['layers']]
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    channels = None if _CHANNELS.value is None else read_channels(_CHANNELS.value)
    model, model_kwargs, mode_argument = _MODEL.value, None, _MODE_ARGUMENT.value
    exported = exported_network(channels)
    if exported is not None and not flags.FLAGS['model'].present:
      # An export's model.json: the network it describes.
      model, model_kwargs, mode_argument = exported
    result = profile(model, _LAYOUT.value, _WIDTH.value, channels, _MAX_WIDTH.value,
                     _IMAGE_SIZE.value, _NUM_CLASSES.value, _LATENCY.value, _PUBLISHED.value,
                     model_kwargs, _LATENCY_BACKEND.value, _LATENCY_THREADS.value, mode_argument)
  except (ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if _JSON.value:
    if not _PER_LAYER.value:
      del result['layers']
      for unit in result['units']:
        del unit['layers']
    print(json.dumps(result, indent=1))
  else:
    print(format_table(result, _PER_LAYER.value))


if __name__ == '__main__':
  app.run(main)
