"""Suite-wide settings: one torch thread.

The tests train tiny models on a 2-core machine; with more than one intra-op thread
each small matrix product pays thread hand-off costs (measured ~40x slower per model
evaluation when the cores are shared), so every test runs single-threaded. Results do
not depend on the thread count beyond float rounding.
"""

import torch

torch.set_num_threads(1)
