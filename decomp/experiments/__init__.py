"""The experiment harness: what the project uses to *show* the library works, not the library.

- :mod:`~decomp.experiments.data` -- CIFAR-10 (original batches, JPEG folders, the embedded subset)
- :mod:`~decomp.experiments.zoo` -- VGG16-BN and AlexNet for 32x32 inputs
- :mod:`~decomp.experiments.train` -- resumable training, fine-tuning, evaluation
- :mod:`~decomp.experiments.reproduce` -- one variant: decompose, fine-tune, time (cached stages)
- :mod:`~decomp.experiments.profiles`, :mod:`~decomp.experiments.cifar10`,
  :mod:`~decomp.experiments.cifar10_outputs` -- the CIFAR-10 reproduction and its files
- :mod:`~decomp.experiments.catalog` -- the VGG16 / AlexNet layer catalogue of the benchmarks
- :mod:`~decomp.experiments.runinfo` -- atomic writes and JSON sidecars (run records)
- :mod:`~decomp.experiments.distributed` -- torchrun: the process group, rank 0, broadcasts, all-reduces
- :mod:`~decomp.experiments.imagefolder`, :mod:`~decomp.experiments.finetune_folder` -- ImageFolder
  (ImageNet layout) data and fine-tuning a torchvision model with the user's weights
- :mod:`~decomp.experiments.scaling` -- fine-tuning throughput with 1 and 2 processes

The harness imports the library (:mod:`decomp`); the library never imports the harness.
"""
