"""Character LSTM for next-character prediction on Shakespeare, the model of
McMahan et al. (2017) and LEAF (Caldas et al. 2018): an 8-dimensional character
embedding, two LSTM layers of 256 units, and a linear layer from the last step's
output to one logit per character of the vocabulary.

Input: (batch, seq_len) integer character indices (any integer dtype; cast to int64;
floating-point features are a ValueError, not truncated to indices),
e.g. the 80-character windows of :mod:`fl.data.shakespeare`. Output: (batch,
vocab_size) logits for the next character. With a 96-symbol vocabulary it has
~0.82M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from fl.checks import check_integer


class CharLSTM(nn.Module):
    """Embedding -> ``layers``-layer LSTM(``hidden``) -> linear on the last time step."""

    def __init__(self, vocab_size: int, embed_dim: int = 8, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        for key, number in (("embed_dim", embed_dim), ("hidden", hidden), ("layers", layers)):
            check_integer(key, number)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():  # .long() would truncate features to indices and train on without a word
            raise ValueError(f"x ({x.dtype}): allowed is integer character indices, e.g. fl.data.shakespeare's "
                             "windows; char_lstm takes no floating-point features")
        output, _ = self.lstm(self.embedding(x.long()))
        return self.fc(output[:, -1])
