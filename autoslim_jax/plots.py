"""Figures and a Markdown table of a search's results, from its JSON files alone.

Pure functions over plain dicts as loaded from ``trajectory.json`` (a list of step records) and
``results.json`` (design.md's schemas); each figure is written as a PNG, whose path is returned.
Accuracies are stored as fractions in [0, 1] and shown in percent; MACs, params and memory are
stored as counts and shown in millions.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Mapping, Sequence

import matplotlib

# Selected before pyplot is imported so that plotting works without a display (servers, CI).
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from autoslim_jax import files  # pylint: disable=g-import-not-at-top,wrong-import-position

_DPI = 120


def _millions(value: float | None) -> float | None:
  return None if value is None else value / 1e6


def _percent(value: float | None) -> float | None:
  return None if value is None else 100.0 * value


def save_figure(fig, path: str | os.PathLike) -> str:
  """Writes ``fig`` as a PNG at ``path`` (creating its folder) and frees it."""
  path = os.fspath(path)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=_DPI, format='png')
  files.write_atomic(path, buffer.getvalue())  # a crash never leaves half a PNG
  # pyplot keeps every figure alive until closed: plotting many targets would leak memory.
  plt.close(fig)
  return path


def _find_target(results: Mapping[str, Any], target_name: str) -> Mapping[str, Any]:
  for target in results.get('targets', []):
    if target['name'] == target_name:
      return target
  names = [target['name'] for target in results.get('targets', [])]
  raise KeyError(f'no target {target_name!r} in the results; targets: {names}')


def plot_trajectory(trajectory: Sequence[Mapping[str, Any]],
                    targets: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                    title: str = '') -> str:
  """Held-out accuracy against MACs along the greedy path, with the targets marked.

  A target is marked at its recorded ``step``; a MACs target also gets a dashed line at its value
  (in MACs, e.g. 200e6 for ``macs_200M``).
  """
  macs = [record['macs'] / 1e6 for record in trajectory]
  accuracy = [_percent(record['heldout_accuracy']) for record in trajectory]
  fig, ax = plt.subplots(figsize=(8, 5))
  ax.plot(macs, accuracy, '-o', markersize=3, linewidth=1, color='tab:blue', label='greedy path')
  if trajectory:
    ax.plot(macs[0], accuracy[0], 's', markersize=8, color='tab:blue')
    ax.annotate('max', (macs[0], accuracy[0]), textcoords='offset points', xytext=(-8, -14),
                ha='right')
  for i, target in enumerate(targets):
    color = f'C{(i + 1) % 10}'
    if target.get('metric') == 'macs':
      ax.axvline(target['value'] / 1e6, linestyle='--', linewidth=1, color=color)
    step = target.get('step')
    if step is None or not 0 <= step < len(trajectory):
      continue  # A target the search never reached has no point on the path.
    ax.plot(macs[step], accuracy[step], 'D', markersize=7, color=color, label=target['name'])
    # Alternate the offsets so that the names of close targets do not overlap.
    ax.annotate(target['name'], (macs[step], accuracy[step]), textcoords='offset points',
                xytext=(6, -14 if i % 2 else 8), color=color)
  ax.set_xlabel('MACs (M)')
  ax.set_ylabel('held-out accuracy (%)')
  ax.set_title(title or 'greedy slimming trajectory')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  return save_figure(fig, path)


def plot_accuracy_vs_macs(results: Mapping[str, Any], path: str | os.PathLike) -> str:
  """Test accuracy against MACs of the AutoSlim nets and of the uniform-width baselines.

  Nets without a test accuracy are left out; with none at all the AutoSlim nets' held-out
  accuracy is plotted instead, as the y label says.
  """
  targets = results.get('targets', [])

  def series(kind: str, key: str) -> tuple[list[float], list[float], list[str]]:
    points = sorted((target[kind]['macs'] / 1e6, _percent(target[kind][key]), target['name'])
                    for target in targets if (target[kind] or {}).get(key) is not None)
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]

  autoslim = series('autoslim', 'test_accuracy')
  uniform = series('uniform', 'test_accuracy')
  ylabel = 'test accuracy (%)'
  if not autoslim[0] and not uniform[0]:
    autoslim = series('autoslim', 'heldout_accuracy')
    ylabel = 'AutoSlim held-out accuracy (%) (no test accuracies)'
  fig, ax = plt.subplots(figsize=(7, 5))
  ax.plot(autoslim[0], autoslim[1], '-o', color='tab:red', label='AutoSlim')
  for x, y, name in zip(*autoslim):
    ax.annotate(name, (x, y), textcoords='offset points', xytext=(5, 5), fontsize='small')
  if uniform[0]:
    ax.plot(uniform[0], uniform[1], '--s', color='tab:gray', label='uniform width')
  ax.set_xlabel('MACs (M)')
  ax.set_ylabel(ylabel)
  ax.set_title(' '.join(str(results[key]) for key in ('model', 'dataset') if key in results))
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower right')
  return save_figure(fig, path)


def plot_channels(results: Mapping[str, Any], target_name: str,
                  path: str | os.PathLike) -> str:
  """Channels per unit of one target's AutoSlim net, its uniform baseline and the max network.

  As the paper's figures 5 and 6: units in network order along x, grouped bars per unit.
  """
  target = _find_target(results, target_name)
  units = list(results['units'])
  series = [('max', results['max']['channels'], 'lightgray')]
  if target['uniform'] is not None:
    series.append((f'uniform {target["uniform"]["width_mult"]:.4g}x',
                   target['uniform']['channels'], 'tab:gray'))
  series.append(('AutoSlim', target['autoslim']['channels'], 'tab:red'))
  width = 0.8 / len(series)
  # Wide enough for every unit's name, which MobileNets have dozens of.
  fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(units) + 2), 5))
  for i, (label, channels, color) in enumerate(series):
    xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(units))]
    ax.bar(xs, [channels.get(unit, 0) for unit in units], width=width, color=color, label=label)
  ax.set_xticks(range(len(units)))
  ax.set_xticklabels(units, rotation=90, fontsize='small')
  ax.set_xlim(-0.6, len(units) - 0.4)
  ax.set_xlabel('unit')
  ax.set_ylabel('channels')
  title = f'{target_name}: AutoSlim {target["autoslim"]["macs"] / 1e6:.1f}M MACs'
  if target['uniform'] is not None:
    title += f', uniform {target["uniform"]["macs"] / 1e6:.1f}M MACs'
  ax.set_title(title)
  ax.grid(True, axis='y', alpha=0.3)
  ax.legend(loc='upper left')
  return save_figure(fig, path)


def plot_all_channels(results: Mapping[str, Any], directory: str | os.PathLike) -> list[str]:
  """One :func:`plot_channels` figure per target: ``channels_<target name>.png`` in a folder."""
  paths = []
  for target in results.get('targets', []):
    # Target names are like 'macs_200M'; anything unsafe in a file name becomes '_'.
    stem = re.sub(r'[^\w.-]', '_', target['name'])
    paths.append(plot_channels(results, target['name'],
                               os.path.join(os.fspath(directory), f'channels_{stem}.png')))
  return paths


def _format_count(value: float | None) -> str:
  """MACs or memory in millions: 2 decimals under 100M (small CIFAR nets), else 1."""
  if value is None:
    return '-'
  millions = value / 1e6
  return f'{millions:.2f}' if millions < 100 else f'{millions:.1f}'


def _format_params(value: float | None) -> str:
  return '-' if value is None else f'{value / 1e6:.3f}'


def _format_accuracy(value: float | None) -> str:
  return '-' if value is None else f'{100 * value:.2f}'


def _format_difference(value: float | None) -> str:
  return '-' if value is None else f'{100 * value:+.2f}'


def results_table(results: Mapping[str, Any]) -> str:
  """A Markdown table of the targets: AutoSlim net, uniform baseline, accuracy difference.

  Missing accuracies are shown as '-'; the difference is in percentage points.
  """
  header = ['target', 'MACs (M)', 'params (M)', 'memory (M)', 'AutoSlim test acc (%)',
            'uniform width', 'uniform MACs (M)', 'uniform test acc (%)', 'difference (points)']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * 8) + '|']
  for target in results.get('targets', []):
    autoslim, uniform = target['autoslim'], target['uniform'] or {}
    width = uniform.get('width_mult')
    row = [target['name'], _format_count(autoslim.get('macs')),
           _format_params(autoslim.get('params')), _format_count(autoslim.get('memory')),
           _format_accuracy(autoslim.get('test_accuracy')),
           '-' if width is None else f'{width:.4g}', _format_count(uniform.get('macs')),
           _format_accuracy(uniform.get('test_accuracy')),
           _format_difference(target.get('difference'))]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


# Experiments over seeds and the estimator study (autoslim_jax/experiment.py).


def _mean(stat, scale=1.0, digits=2) -> str:
  return '-' if stat is None else f'{scale * stat["mean"]:.{digits}f}'


def _mean_std(stat, scale=100.0, sign='') -> str:
  if stat is None:
    return '-'
  return f'{scale * stat["mean"]:{sign}.2f} ± {scale * stat["std"]:.2f}'


def _interval(stat) -> str:
  """A paired difference's mean and confidence interval in points, '+1.20 [-0.80, +3.20]';
  '-' where undefined (one seed)."""
  if stat is None or stat.get('ci') is None:
    return '-'
  low, high = stat['ci']
  return f'{100 * stat["mean"]:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]'


def summary_table(summary: Mapping[str, Any]) -> str:
  """Markdown: per target, both nets' resources and test accuracy (mean ± std over seeds), and
  their paired difference (mean ± std, and its confidence interval), then a note on how to read
  the interval."""
  header = ['target', 'AutoSlim MACs (M)', 'params (M)', 'memory (M)', 'AutoSlim test acc (%)',
            'uniform width', 'uniform MACs (M)', 'params (M)', 'memory (M)',
            'uniform test acc (%)', 'difference (points)', 'AutoSlim better',
            'difference, 95% CI (points)']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * 12) + '|']
  seeds = len(summary['seeds'])
  for row in summary['targets']:
    autoslim, uniform = row['autoslim'], row['uniform']
    lines.append('| ' + ' | '.join([
        row['name'], _mean(autoslim['macs'], 1e-6), _mean(autoslim['params'], 1e-6, 3),
        _mean(autoslim['memory'], 1e-6), _mean_std(autoslim['test_accuracy']),
        _mean(uniform['width_mult'], 1.0, 4), _mean(uniform['macs'], 1e-6),
        _mean(uniform['params'], 1e-6, 3), _mean(uniform['memory'], 1e-6),
        _mean_std(uniform['test_accuracy']), _mean_std(row['difference'], sign='+'),
        f'{row["autoslim_better"]} of {seeds}', _interval(row['difference'])]) + ' |')
  lines += ['', 'difference: AutoSlim minus uniform test accuracy, paired seed by seed (both nets '
            'of a seed train on the same batches); 95% CI: Student\'s t with n - 1 degrees of '
            'freedom over the n seeds\' differences (\'-\' for one seed: undefined). An interval '
            'that excludes 0 is a difference beyond the seeds\' noise.']
  return '\n'.join(lines) + '\n'


def plot_seeds(summary: Mapping[str, Any], path: str) -> str:
  """Test accuracy against MACs, mean ± std over seeds, each seed's net as a faint point."""
  fig, ax = plt.subplots(figsize=(7, 5))
  for family, style, color, label in (('autoslim', '-o', 'tab:red', 'AutoSlim'),
                                      ('uniform', '--s', 'tab:gray', 'uniform width')):
    rows = sorted((r for r in summary['targets'] if r[family]['test_accuracy'] is not None),
                  key=lambda r: r[family]['macs']['mean'])
    if not rows:
      continue
    for row in rows:
      ax.plot([m / 1e6 for m in row[family]['macs']['values']],
              [100 * a for a in row[family]['test_accuracy']['values']], style[-1],
              color=color, alpha=0.3, markersize=4)
    ax.errorbar([r[family]['macs']['mean'] / 1e6 for r in rows],
                [100 * r[family]['test_accuracy']['mean'] for r in rows],
                yerr=[100 * r[family]['test_accuracy']['std'] for r in rows], fmt=style,
                color=color, capsize=4, label=f'{label} (mean ± std, {len(summary["seeds"])} seeds)')
  ax.set_xlabel('MACs (M)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f'{summary["model"]} on {summary["dataset"]}')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower right', fontsize='small')
  return save_figure(fig, path)


def _tau(tau: Mapping[str, float | None]) -> str:
  if tau['tau'] is None:
    return 'undefined'
  return f'{tau["tau"]:+.3f} (p = {tau["p_value"]:.2g})'


def estimator_table(report: Mapping[str, Any]) -> str:
  """Markdown: each config's supernet scores and from-scratch accuracy, then Kendall's taus."""
  lines = ['| config | kind | MACs (M) | supernet held-out acc, batch stats (%) | '
           'supernet held-out acc, calibrated (%) | from scratch test acc (%) |',
           '|---|---|---:|---:|---:|---:|']
  for e in sorted(report['configs'], key=lambda e: -e['macs']):
    lines.append(f'| {e["name"]} | {e["kind"]} | {e["macs"] / 1e6:.2f} | '
                 f'{100 * e["heldout_batch_stats"]:.2f} | {100 * e["heldout_calibrated"]:.2f} | '
                 f'{100 * e["scratch_test_accuracy"]:.2f} |')
  taus = report['kendall_tau']
  lines.append('')
  lines.append(f'Kendall tau with the from-scratch accuracy over {len(report["configs"])} configs: '
               + '; '.join(f'{label} {_tau(taus[k])}'
                           for k, label in (('batch_stats', 'supernet, batch statistics'),
                                            ('calibrated', 'supernet, calibrated BatchNorm'),
                                            ('macs', 'MACs alone'))))
  return '\n'.join(lines) + '\n'


def ablation_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Markdown of ``experiment.compare_runs``: per run, the supernet's max-network held-out
  accuracy, each target's AutoSlim test accuracy and its difference from uniform width, then the
  supernet's Kendall taus."""
  targets = [t['name'] for t in rows[0]['targets']]
  header = (['run', 'supernet max held-out (%)']
            + [f'{t}: AutoSlim (%), vs uniform (points)' for t in targets]
            + ['tau, batch stats', 'tau, calibrated', 'configs'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1))
           + '|']
  for row in rows:
    cells = [row['name'], f'{100 * row["supernet_max_heldout"]:.2f}']
    cells += [f'{100 * t["autoslim"]:.2f}, {100 * t["difference"]:+.2f}' for t in row['targets']]
    taus = row['taus']
    cells += ([_tau(taus['batch_stats']), _tau(taus['calibrated']), str(taus['configs'])]
              if taus else ['-', '-', '-'])
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def plot_estimator(report: Mapping[str, Any], path: str) -> str:
  """From-scratch test accuracy against the supernet's held-out accuracy, both BN modes."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
  markers = {'autoslim': ('D', 'tab:red'), 'uniform': ('s', 'tab:gray'),
             'path': ('o', 'tab:blue'), 'random': ('^', 'tab:green'),
             'reference': ('v', 'tab:purple')}
  for ax, key, title in ((axes[0], 'batch_stats', 'BatchNorm batch statistics (as searched)'),
                         (axes[1], 'calibrated', 'calibrated BatchNorm')):
    for kind, (marker, color) in markers.items():
      points = [e for e in report['configs'] if e['kind'] == kind]
      if points:
        ax.scatter([100 * e[f'heldout_{key}'] for e in points],
                   [100 * e['scratch_test_accuracy'] for e in points], marker=marker,
                   color=color, label=kind)
    ax.set_title(f'{title}\nKendall tau {_tau(report["kendall_tau"][key])}',
                 fontsize='medium')
    ax.set_xlabel('supernet held-out accuracy (%)')
    ax.grid(True, alpha=0.3)
  axes[0].set_ylabel('trained from scratch: test accuracy (%)')
  axes[0].legend(loc='lower right', fontsize='small')
  return save_figure(fig, path)
