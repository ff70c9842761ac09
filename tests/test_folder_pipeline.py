"""A folder of one's own images through the command line, as a new user runs it."""

import json
import os

import numpy as np
import PIL.Image
import PIL.ImageDraw

from conftest import run

from autoslim_jax import export

# A tiny MobileNet v1 (CIFAR layout): a quick compile; two sandwich members.
TINY = ('--config=configs/quickstart.py', '--config.model=mobilenet_v1',
        '--config.model_kwargs.in_channels=3', '--config.model_kwargs.num_classes=3',
        '--config.dataset.name=folder', '--config.dataset.heldout_size=16',
        '--config.supernet.num_sandwich=2', '--config.supernet.batch_size=16',
        '--config.supernet.base_batch_size=16', '--config.supernet.eval_batch_size=16',
        '--config.search.batch_size=16', '--config.calibration.batch_size=16',
        '--config.calibration.num_images=32', '--config.retrain.batch_size=16',
        '--config.retrain.base_batch_size=16', '--config.retrain.eval_batch_size=16',
        '--config.supernet.log_every_steps=1')


def draw_folder(root, sizes, grey_one=True, per_class=16, test_per_class=4):
  """Three classes of pictures a network can tell apart (a disc, a bar, a cross, each in its
  colour, at random places), in several sizes, as JPEG and PNG files; one grey image."""
  rng = np.random.RandomState(0)
  colours = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]
  for split, count in (('train', per_class), ('test', test_per_class)):
    for label, colour in enumerate(colours):
      folder = root / split / f'class_{label}'
      folder.mkdir(parents=True)
      for i in range(count):
        width, height = sizes[(i + label) % len(sizes)]
        image = PIL.Image.new('RGB', (width, height), tuple(rng.randint(0, 60, 3)))
        draw = PIL.ImageDraw.Draw(image)
        x, y = rng.randint(0, width // 2), rng.randint(0, height // 2)
        box = (x, y, x + width // 2, y + height // 2)
        if label == 0:
          draw.ellipse(box, fill=colour)
        elif label == 1:
          draw.rectangle((x, y, x + width // 2, y + height // 6), fill=colour)
        else:
          draw.line(box, fill=colour, width=3)
          draw.line((box[0], box[3], box[2], box[1]), fill=colour, width=3)
        if grey_one and split == 'train' and label == 0 and i == 0:
          image = image.convert('L')
        image.save(folder / (f'{i}.jpg' if i % 2 else f'{i}.png'))


def test_folder_of_many_sizes_runs_the_whole_pipeline(tmp_path):
  """JPEG and PNG images of three sizes and one grey image, cropped and resized to 16x16:
  supernet, search, retraining and export from the command line."""
  draw_folder(tmp_path / 'images', sizes=[(40, 30), (24, 50), (33, 33)])
  workdir = tmp_path / 'run'
  result = run('autoslim_jax.main', *TINY, f'--workdir={workdir}',
               f'--config.dataset.path={tmp_path / "images"}', '--config.dataset.image_size=16',
               '--config.model_kwargs.image_size=16', '--config.dataset.augmentation=inception',
               '--config.supernet.num_epochs=2', '--config.retrain.num_epochs=1',
               '--config.search.targets.macs_of_width=(0.45,)',
               '--config.retrain.uniform_baseline=False')  # the suite's other runs train it
  assert '48 training and 12 test images in 3 classes' in result.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert results['dataset'] == f'folder:{tmp_path / "images"}' and results['test_images'] == 12
  (target,) = results['targets']
  assert 0 <= target['autoslim']['test_accuracy'] <= 1
  module, variables, _ = export.load_slim(target['autoslim']['export'])
  logits = module.apply(variables, np.zeros((2, 16, 16, 3), np.float32), train=False)
  assert logits.shape == (2, 3)


def test_folder_of_32x32_images_needs_no_image_size(tmp_path):
  """CIFAR-sized PNGs keep their size: the CIFAR-layout network at 32x32 trains on them."""
  draw_folder(tmp_path / 'images', sizes=[(32, 32)], grey_one=False)
  workdir = tmp_path / 'run'
  result = run('autoslim_jax.main', *TINY, f'--workdir={workdir}',
               f'--config.dataset.path={tmp_path / "images"}',
               '--config.model_kwargs.image_size=32', '--config.dataset.augmentation=crop_flip',
               '--config.supernet.num_epochs=1', '--config.stages=supernet')
  assert 'supernet: 2 steps' in result.stderr
  assert os.listdir(workdir / 'supernet' / 'checkpoints') == ['2']
