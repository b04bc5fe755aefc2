"""What the tiny tests share: LeNet5 on a 256/128 slice of digits (seconds), and a tiny conv net with BatchNorm."""
import torch.nn.functional as F
from torch import nn

LENET5_ON_DIGITS = """
[model]
name = "lenet5"
[data]
name = "digits"
limit_train = 256
limit_test = 128
"""


class ConvBN(nn.Module):
    """A tiny conv net with BatchNorm, to check that running statistics follow each path."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.norm = nn.BatchNorm2d(4)
        self.out = nn.Linear(4 * 10 * 10, 10)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.conv(x))).flatten(1))
