"""What a training run logs: scalars to TensorBoard event files and log lines on the main
process (without TensorFlow or torch), and the parameter count."""

import os
import subprocess
import sys

import jax
import numpy as np

from autoslim_jax import metrics
from conftest import REPO, read_scalars


def test_scalars_reach_the_event_files_at_each_write_and_the_log(tmp_path, caplog):
  writer = metrics.MetricWriter(str(tmp_path))
  with caplog.at_level('INFO'):
    writer.write_scalars(2, {'loss_max': 2.5, 'epoch': np.float64(0.25)})
    # written through: a killed run keeps what it logged
    assert read_scalars(tmp_path) == {'loss_max': {2: 2.5}, 'epoch': {2: 0.25}}
    writer.write_scalars(4, {'loss_max': np.float32(1.25), 'heldout_accuracy_max': 0.75})
  writer.close()
  assert read_scalars(tmp_path) == {'loss_max': {2: 2.5, 4: 1.25}, 'epoch': {2: 0.25},
                                    'heldout_accuracy_max': {4: 0.75}}
  assert '[2] loss_max 2.5, epoch 0.25' in caplog.text
  assert '[4] heldout_accuracy_max 75.00%, loss_max 1.25' in caplog.text


def test_the_progress_line_reads_as_a_person_reads_it():
  line = metrics.format_scalars(120, {
      'eta_minutes': 1.7, 'images_per_second': 5012.4, 'learning_rate': 0.0147226,
      'loss': 5.63014, 'max_accuracy': 0.692187, 'epoch': 6.0}, 'supernet')
  assert line == ('supernet [120] loss 5.63, max_accuracy 69.22%, lr 0.0147, epoch 6.00, '
                  '5,012 img/s, ETA 1:42')
  assert metrics.format_duration(2 * 3600 + 5 * 60 + 9.4) == '2:05:09'


def test_other_processes_write_nothing(tmp_path, caplog, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  writer = metrics.MetricWriter(str(tmp_path / 'run'))
  with caplog.at_level('INFO'):
    writer.write_scalars(1, {'loss_max': 1.0})
  writer.close()
  assert not os.path.exists(tmp_path / 'run')
  assert 'loss_max' not in caplog.text


def test_parameters_are_logged_as_a_table_or_when_long_as_a_total(caplog):
  few = {'conv': {'kernel': np.zeros((3, 3, 1, 8)), 'bias': np.zeros(8)}}
  rows = metrics.PARAMETER_TABLE_ROWS + 1
  many = {f'layer{i}': {'kernel': np.zeros((2, 5))} for i in range(rows)}
  with caplog.at_level('INFO'):
    metrics.log_parameters('supernet', few)
    metrics.log_parameters('retrain', many)
  assert '| conv/kernel | (3, 3, 1, 8) |' in caplog.text and 'Total: 80 -- ' in caplog.text
  assert f'retrain: {10 * rows:,} parameters in {rows} arrays' in caplog.text
  assert 'layer0/kernel' not in caplog.text


def test_writing_imports_neither_tensorflow_nor_torch(tmp_path):
  code = ('import sys; from autoslim_jax import metrics; '
          f'writer = metrics.MetricWriter({str(tmp_path)!r}); '
          "writer.write_scalars(1, {'loss_max': 1.0}); writer.close(); "
          "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))")
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == '[]'
  assert read_scalars(tmp_path) == {'loss_max': {1: 1.0}}
