"""The pooling-ablation harness, above the library.

One way down: config -> data -> models -> metrics -> statistics -> training
-> report_file -> results -> experiment -> cli, each module importing only
those before it and the library (`kpool.layers`, `kpool.registry`);
`environment` (device and version facts) sits beside them.

`import kpool.harness` registers the harness's augmentation layer
(`RandomCropFlip`), which every model the harness saves contains: load
such a model with `keras.saving.load_model` after `import kpool.harness`.
"""

import os

if os.environ.get("KPOOL_DEFER_IMPORTS") != "1":
    from kpool.harness import augment  # noqa: F401
