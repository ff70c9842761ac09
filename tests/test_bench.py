"""The benchmarks run, and their comparison is fair: the PyTorch slicing implementation computes
the same network as the masked JAX supernet (same weights, same logits at any config)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, command_env

sys.path.insert(0, os.path.join(REPO, 'bench'))
import bench_supernet_step  # pylint: disable=g-import-not-at-top,wrong-import-position

from autoslim_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_torch_slicing_network_computes_the_masked_jax_network():
  torch = pytest.importorskip('torch')
  network = models.create_network('mobilenet_v2', layout='cifar', width_mult=0.5, image_size=8)
  space = network.channel_space()
  model = bench_supernet_step.torch_model(network, 'cifar', 'cpu')
  configs = bench_supernet_step.drawn_configs(space, 0) + [space.min_config()]
  assert bench_supernet_step.torch_logits_match(network, model, configs, 'cpu') < 1e-3
  # A wrong width in PyTorch (the last unit one group narrower) is caught.
  wrong = dict(configs[0], last=space['last'].choices[-2])
  assert model(torch.zeros(2, 3, 8, 8), wrong).shape == (2, 10)
  original = model.forward
  model.forward = lambda x, config, update_stats=False: original(x, wrong, update_stats)
  assert bench_supernet_step.torch_logits_match(network, model, configs[:1], 'cpu') > 0.1


def test_input_benchmark_smoke_run(tmp_path):
  """bench/bench_input.py at tiny sizes: every style and set-up runs and records its row."""
  results = tmp_path / 'results.md'
  subprocess.run([sys.executable, os.path.join('bench', 'bench_input.py'), '--smoke',
                  f'--results={results}'], cwd=REPO, env=command_env(), check=True,
                 capture_output=True, timeout=300)
  rows = results.read_text().splitlines()
  assert len(rows) == 6 and all('images/s' in r for r in rows)
  assert sum('ImageNet-style' in r and 'worker processes' in r for r in rows) == 1


def _smoke_env(results):
  return dict(command_env(), AUTOSLIM_BENCH_SMOKE='1', AUTOSLIM_BENCH_RESULTS=str(results))


@pytest.mark.parametrize('script', ['bench_conv_forms.py', 'bench_resources.py',
                                    'bench_checkpoint.py', 'bench_latency_backends.py'])
def test_benchmark_smoke_runs(script, tmp_path):
  """Every benchmark script runs (AUTOSLIM_BENCH_SMOKE: tiny sizes) and records its rows; the
  supernet-step and search benchmarks run in the accelerator command's smoke test
  (tests/test_accelerator_run.py)."""
  results = tmp_path / 'rows.md'
  subprocess.run([sys.executable, os.path.join('bench', script)], cwd=REPO,
                 env=_smoke_env(results), check=True, capture_output=True, timeout=600)
  assert results.read_text().count('\n') >= 1


def test_pipeline_compiles_a_handful_of_programs_and_a_second_seed_none(tmp_path):
  """bench/bench_compiles.py at tiny sizes (the shortened quickstart, fresh compilation cache):
  one train step program for the supernet and one for every retrained net together, one
  parameter initialisation, one search scorer; seed 1 of the same config, with the same cache,
  compiles nothing but the export check of a slim net whose widths seed 0 did not find (seed,
  learning rate and searched widths are inputs of the training programs, not constants). Before issue 26 a quickstart compiled five train steps and five initialisations."""
  results = tmp_path / 'rows.md'
  subprocess.run([sys.executable, os.path.join('bench', 'bench_compiles.py'), '--second_seed',
                  f'--keep={tmp_path / "runs"}'], cwd=REPO, env=_smoke_env(results), check=True,
                 capture_output=True, timeout=600)
  first, second = (json.loads((tmp_path / 'runs' / seed / 'compilation.json').read_text())
                   for seed in ('seed_0', 'seed_1'))
  compiled = first['programs_by_name']
  assert compiled['jit(per_device)'] <= 2 and compiled['jit(step)'] <= 2, compiled
  assert compiled['jit(init)'] <= 1 and compiled['jit(score)'] <= 1, compiled
  assert first['total']['long_programs'] <= 7, first['total']
  # A slim net's shapes are its searched widths: the CPU check of its exported artifacts
  # (deploy.reference_logits) is the one program a width that seed 0 did not find compiles.
  second_compiled = dict(second['programs_by_name'])
  export_checks = second_compiled.pop('jit(export_check)', 0)
  assert second_compiled == {}, second['programs_by_name']
  assert export_checks <= compiled['jit(export_check)'], (export_checks, compiled)
  # Every program but the export checks came from the cache (seed 1 may find fewer distinct
  # widths than seed 0, e.g. a searched net as wide as its uniform baseline: fewer checks).
  assert second['total']['cache_hits'] >= (first['total']['programs']
                                           - compiled['jit(export_check)']), (first, second)
  assert [r.split(' | ')[1] for r in results.read_text().splitlines()] == [
      'pipeline compiles, seed 0', 'pipeline compiles, seed 1, same cache']
