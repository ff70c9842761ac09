"""Retraining recipes for the quickstart's slim networks: the uniform 0.4x and 0.3x nets trained
on the embedded digits with one learning rate / epochs / label smoothing (/ optimizer), then
BatchNorm-calibrated and tested. Results are in runs/quickstart.md.

  python runs/quickstart_recipes.py 0.03 20 0.1          # SGD lr 0.03, 20 epochs, smoothing 0.1
  python runs/quickstart_recipes.py 0.003 20 0.1 adamw
"""
import sys, time, importlib.util, jax
spec = importlib.util.spec_from_file_location('q', 'configs/quickstart.py'); q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
from autoslim_jax import pipeline, retrain, input_pipeline
lr, epochs, ls = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
config = q.get_config()
config.retrain.base_learning_rate = lr; config.retrain.num_epochs = epochs; config.retrain.label_smoothing = ls
if len(sys.argv) > 4: config.retrain.optimizer = sys.argv[4]
net, space = pipeline.build_network(config)
src = input_pipeline.create_source(config.dataset)
ev = pipeline.Evaluator(config, src)
for w in (0.4, 0.3):
  t = time.time()
  st = retrain.train_slim(config, f'/tmp/recipe/{sys.argv[1]}_{sys.argv[2]}_{sys.argv[3]}_{w}', net, net.uniform_config(w), src, 'x')
  _, m = ev.calibrated_test(net.slim_module(net.uniform_config(w)), retrain.trained_variables(st))
  print('RESULT', sys.argv[1:], w, m['accuracy'], time.time() - t, flush=True)
