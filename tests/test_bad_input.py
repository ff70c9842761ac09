"""Bad input is refused early and clearly: every mistake below is named in the message, and
raised before JAX compiles anything (a mistake must not cost a supernet's compile)."""

import json
import os

import ml_collections
import numpy as np
import pytest

from autoslim_jax import defaults
from autoslim_jax import models
from autoslim_jax import pipeline
from autoslim_jax import published
from conftest import backend_compiles, run

def _config():
  """A valid small run on the embedded digits (as the quickstart)."""
  config = defaults.get_default_config()
  config.model_kwargs.update(dict(layout='cifar', width_mult=0.5, image_size=8, in_channels=1,
                                  num_classes=10))
  config.dataset.update(dict(name='digits', heldout_size=200, augmentation='shift'))
  for section in (config.supernet, config.retrain):
    section.update(dict(batch_size=64, eval_batch_size=200))
  config.search.batch_size = 200
  config.calibration.batch_size = 128
  return config


def _refused(config, workdir, match, **kwargs):
  before = backend_compiles()
  with pytest.raises(ValueError, match=match):
    pipeline.run(config, str(workdir), **kwargs)
  assert backend_compiles() == before, 'compiled before refusing'


def _set(config, key, value):
  *sections, field = key.split('.')
  for section in sections:
    config = config[section]
  config[field] = value


MISTAKES = [
    ('supernet.batchsize', 64,
     r"unknown config key supernet.'batchsize' \(did you mean supernet.'batch_size'\?\)"),
    ('serch', 1, r"unknown config key 'serch' \(did you mean 'search'\?\)"),
    ('min_width', 0.6, r'min_width 0.6 must be in \(0, max width 0.5\]'),  # range inverted
    ('min_width', 0.12, r'10 channel groups and a min width of 0.24 of the max width disagree'),
    ('groups', 1, r'config.groups is 1; valid: >= 2'),
    ('supernet.batch_size', 12, r'supernet.batch_size 12 is not divisible by the 8 devices'),
    ('search.batch_size', 100, r'search.batch_size 100 is not divisible by the 8 devices'),
    ('search.targets.macs', (1e3,), r'search target macs_1K \(macs <= 1000\) is outside the reachable range'),
    ('search.targets.params', (1e12,), r'outside the reachable range'),
    ('supernet.num_sandwich', 1, r'num_sandwich must be >= 2'),
    ('supernet.num_epochs', 0.0, r'config.supernet.num_epochs is 0.0; valid: > 0'),
    ('model', 'mobilenetv2', r"unknown model 'mobilenetv2' \(did you mean 'mobilenet_v2'\?\)"),
    ('model_kwargs.image_size', 16, r'images of shape \(8, 8, 1\) but the network takes '
                                        r'\(16, 16, 1\)'),
    ('dataset.name', 'cifar100000', r"unknown data set 'cifar100000'"),
    ('stages', 'supernet,serach', r"unknown stage 'serach' in config.stages \(did you mean "
                                  r"'search'\?\)"),
    ('retrain.published', ('207M',), r"retrains the published networks: set "
                                     r"config.stages=retrain,export"),
]


@pytest.mark.parametrize('key,value,match', MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_named_before_any_compilation(key, value, match, tmp_path):
  config = _config()
  _set(config, key, value)
  _refused(config, tmp_path, match)
  assert not os.path.exists(tmp_path / 'supernet')


def test_unprepared_imagenet_gives_the_prepare_command(tmp_path):
  config = _config()
  config.dataset.update(dict(name='imagenet2012', data_dir=str(tmp_path / 'tfds'),
                             manual_dir=str(tmp_path / 'manual')))
  _refused(config, tmp_path / 'w', r"imagenet2012 is not prepared .* tfds build imagenet2012 "
                                   rf"--data_dir={tmp_path / 'tfds'} --file_format=array_record "
                                   rf"--manual_dir={tmp_path / 'manual'} \(after putting "
                                   r"ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar")


def test_image_folder_with_an_unreadable_file_names_it(tmp_path):
  for split in ('train', 'test'):
    for label in ('cat', 'dog'):
      os.makedirs(tmp_path / 'images' / split / label)
      for i in range(2):
        jax_free_png = tmp_path / 'images' / split / label / f'{i}.png'
        import PIL.Image  # pylint: disable=g-import-not-at-top
        PIL.Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(jax_free_png)
  broken = tmp_path / 'images' / 'train' / 'dog' / 'broken.jpg'
  broken.write_bytes(b'\xff\xd8 not really a jpeg')
  config = _config()
  config.dataset.update(dict(name='folder', path=str(tmp_path / 'images')))
  _refused(config, tmp_path / 'w', rf'cannot read {broken} as an image')


def test_workdir_of_another_config_is_refused_unless_overwrite(tmp_path):
  config = _config()
  pipeline.claim_workdir(config, str(tmp_path), overwrite=False)  # as a first run does
  (tmp_path / 'supernet').mkdir()
  pipeline.claim_workdir(config, str(tmp_path), overwrite=False)  # the same config resumes
  config.stages = 'supernet'
  pipeline.claim_workdir(config, str(tmp_path), overwrite=False)  # stages may change
  # A workdir written before a config key existed resumes while the key keeps its default...
  with open(tmp_path / 'config.json') as f:
    older = json.load(f)
  del older['supernet']['inplace_distillation']
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(older, f)
  pipeline.claim_workdir(config, str(tmp_path), overwrite=False)
  # ...and is refused when it does not.
  (tmp_path / 'config.json').write_text(json.dumps(older))
  config.supernet.inplace_distillation = False
  _refused(config, tmp_path, r'supernet.inplace_distillation: None there, False now')
  config.supernet.inplace_distillation = True
  other = _config()
  other.supernet.base_learning_rate = 0.1
  _refused(other, tmp_path, r'holds the outputs of another config \(supernet.base_learning_rate: '
                            r'0.5 there, 0.1 now\); use a new --workdir, or --overwrite')
  assert (tmp_path / 'supernet').exists()
  pipeline.claim_workdir(other, str(tmp_path), overwrite=True)
  assert os.listdir(tmp_path) == ['config.json']  # the old outputs are gone
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['supernet']['base_learning_rate'] == 0.1


def test_channel_list_of_another_model_is_refused():
  resnet_list = list(published.get('resnet50', '570M').channel_num_list)
  with pytest.raises(ValueError, match=r'channel_num_list has 54 entries; this network takes 15 '
                                       r'\(stem, block1, .*, block13, classes\)'):
    models.create_network('mobilenet_v1').config_from_list(resnet_list)
  config = _config()
  config.model = 'resnet50'
  config.model_kwargs = ml_collections.ConfigDict(dict(layout="cifar", image_size=8,
                                                                in_channels=1))
  config.retrain.published = ('570M',)
  config.groups = 20  # k_min = 3 for 0.15x of ResNet-50's 1.0x
  config.stages = 'retrain,export'
  _refused(config, '/nonexistent/never/written', 'the published AutoSlim-resnet50 570M does not '
           r'fit the configured network .*entry 53 is the number of classes')


# The commonest command-line slips, through the commands (experiment takes main's flags): one
# line on stderr and status 2, before anything compiles or writes.
SLIPS = [
    ('autoslim_jax.main', '--config.supernet.batchsize=512',
     "error: unknown config key supernet.'batchsize' (did you mean supernet.'batch_size'?); "),
    ('autoslim_jax.experiment', '--config.sed=1',
     "error: unknown config key 'sed' (did you mean 'seed'?); "),
    ('autoslim_jax.main', '--config.model_kwargs.widthmult=0.4',
     "error: unknown config key model_kwargs.'widthmult' (did you mean model_kwargs."
     "'width_mult'?); configs/quickstart.py sets model_kwargs ['image_size', "),
]


@pytest.mark.parametrize('command,override,message', SLIPS, ids=[s[1] for s in SLIPS])
def test_misspelled_override_ends_in_one_line(command, override, message, tmp_path):
  result = run(command, '--config=configs/quickstart.py', override, f'--workdir={tmp_path}/w',
               check=False)
  assert result.returncode == 2
  assert result.stderr.startswith(message) and result.stderr.count('\n') == 1, result.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_missing_config_file_ends_in_one_line_naming_the_configs(tmp_path):
  result = run('autoslim_jax.main', '--config=configs/nope.py', f'--workdir={tmp_path}/w',
               check=False)
  assert result.returncode == 2
  assert result.stderr.startswith('error: config file configs/nope.py does not exist; the '
                                  'configs are: configs/cifar10_mbv1.py, ')
  assert 'configs/quickstart.py' in result.stderr and result.stderr.count('\n') == 1
  assert not os.path.exists(tmp_path / 'w')
