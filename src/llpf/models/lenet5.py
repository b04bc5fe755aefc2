"""LeNet5 (LeCun et al. 1998) as used in the paper's LeNet5@MNIST experiments.

Two 5x5 convolutions with max-pooling and three fully connected layers, ReLU
activations. 32x32 input is the classic form; 28x28 input (MNIST) pads the
first convolution by 2 so the shapes, and so the parameter names and sizes,
are the same for both. ``width`` scales the channels (6, 16) and the hidden
units (120, 84); 1.0 is the classic model.
"""
from torch import nn

from .width import scaled


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 32, width: float = 1.0):
        super().__init__()
        if image_size not in (28, 32):
            raise ValueError(f"LeNet5 takes 28x28 or 32x32 images, got {image_size}")
        c1, c2, h1, h2 = (scaled(n, width) for n in (6, 16, 120, 84))
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2 if image_size == 28 else 0)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 5 * 5, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = x.flatten(1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)
