"""The `kpool` command's entry point, outside the `kpool` package.

`import kpool` imports the layers, hence Keras and its backend (seconds, and
TensorFlow's start-up logs), so that `keras.saving.load_model` finds them.
`kpool --help`, `kpool report` and `kpool merge` need none of that: this
entry point imports the package with its layers deferred, and `kpool run`
imports them when it builds a model.
"""

import os


def main(argv=None):
    os.environ["KPOOL_DEFER_IMPORTS"] = "1"
    try:
        from kpool.harness import cli
    finally:
        del os.environ["KPOOL_DEFER_IMPORTS"]
    return cli.main(argv)
