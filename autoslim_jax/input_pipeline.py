"""Data sets.

For now: the embedded default, scikit-learn's 8x8 handwritten digits (1,797 real images that
ship inside the scikit-learn package, so the quickstart runs offline on a fresh machine). The
tfds / tf.data pipelines for CIFAR-10, ImageNet and image folders come with the training issue.

Every data set gives three splits: ``train``, ``heldout`` (carved deterministically from the
training data; the greedy search scores configs on it) and ``test`` (reported results only).
"""

from __future__ import annotations

import dataclasses

import numpy as np

EMBEDDED_DATASETS = ('digits',)


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # float32 [N, H, W, C] in [0, 1]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)


def load_digits(heldout_size: int = 300, test_size: int = 297) -> dict[str, Split]:
  """scikit-learn's digits: 8x8x1 images of 10 classes, split train / heldout / test.

  The split is a fixed permutation (seed 0), so every run and every host sees the same one.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  if heldout_size + test_size >= len(labels):
    raise ValueError(f'digits has {len(labels)} images: heldout_size {heldout_size} + '
                     f'test_size {test_size} leaves none for training')
  order = np.random.RandomState(0).permutation(len(labels))
  test, heldout, train = np.split(order, [test_size, test_size + heldout_size])
  return {name: Split(images[idx], labels[idx])
          for name, idx in (('train', train), ('heldout', heldout), ('test', test))}


def load_dataset(name: str, heldout_size: int) -> dict[str, Split]:
  if name == 'digits':
    return load_digits(heldout_size=heldout_size)
  raise ValueError(f'unknown data set {name!r}; available here: {list(EMBEDDED_DATASETS)}')
