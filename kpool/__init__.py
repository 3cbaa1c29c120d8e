"""kpool: pooling layers for Keras 3 and a pooling-ablation harness."""
