"""torch's fast paths, for its eager mode, where each op is its own kernel."""


def fast_path(name, window=None):
    # keras.ops has no 3D depthwise convolution.
    if name == "gate_logits" and window.num_spatial_dims < 3:
        from kpool.backend.depthwise import depthwise_gate_logits

        return depthwise_gate_logits
    return None
