"""The accelerator command (bench/accelerator_run.py) end to end at tiny sizes, on the CPU.

Its own file: the suite's two workers take files whole, and this is one of the longest tests.
"""

import json
import os
import subprocess
import sys

from conftest import REPO, command_env


def test_accelerator_command_smoke_run(tmp_path):
  """python bench/accelerator_run.py OUT --smoke: every part (supernet step against PyTorch,
  search chunks, the CIFAR-sample experiment) runs at tiny sizes and lands in OUT."""
  out = tmp_path / 'out'
  result = subprocess.run([sys.executable, os.path.join('bench', 'accelerator_run.py'), str(out),
                           '--smoke'], cwd=REPO, env=command_env(), capture_output=True,
                          text=True, timeout=1200)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  summary = json.loads((out / 'summary.json').read_text())
  parts = {p['name']: p for p in summary['parts']}
  assert list(parts) == ['experiment', 'supernet_cifar', 'search', 'supernet_imagenet']
  assert all(p['returncode'] == 0 and not p['timed_out'] for p in parts.values())
  assert any('PyTorch slicing' in row for row in parts['supernet_cifar']['rows'])
  assert any('bf16 autocast, channels-last' in row and 'JAX bfloat16 / PyTorch bf16' in row
             for row in parts['supernet_imagenet']['rows'])
  assert sum('greedy search step' in row for row in parts['search']['rows']) == 2
  assert (out / 'compilation_cache').is_dir()  # the experiment's, for a rerun
  assert (out / 'rows.md').read_text().count('| 20') == sum(len(p['rows'])
                                                             for p in parts.values())
  experiment = json.loads((out / 'experiment' / 'summary.json').read_text())
  assert experiment['seeds'] == [0] and summary['environment']['versions']['jax']
