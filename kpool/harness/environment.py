"""Facts about the machine and software that produced a number.

Every benchmark row and every results row records them, so that a number
can be traced to its device, backend and versions. Nothing here times
anything.
"""

import datetime
import os
import platform

import keras


def has_gpu():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def device_name():
    backend = keras.backend.backend()
    if has_gpu():
        if backend == "jax":
            import jax

            return jax.devices()[0].device_kind
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0)
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        return tf.config.experimental.get_device_details(gpu)["device_name"]
    return "cpu"


def machine_name():
    """The CPU model and core count (the host name says nothing useful)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def environment():
    """Columns that say what produced a row."""
    return {
        "backend": keras.backend.backend(),
        "device": device_name(),
        "keras_version": keras.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_name(),
    }
