"""CCT-7/3x1 (Compact Convolutional Transformer, Hassani et al. 2021) for 32x32 images.

The paper's third architecture (CCT7_3x1_32 @CIFAR10). Its M2M phases move
the model part by part (Appendix A.4, Table 1), by these names:

- ``tokenizer.conv_layers.*``: one 3x3 convolution (no bias) to 256 channels,
  ReLU, max-pool 3/2/1; 32x32 pixels become 16x16 = 256 tokens;
- ``classifier.positional_emb``: a learnable embedding per token;
- ``classifier.blocks.0.*`` ... ``classifier.blocks.6.*``: seven transformer
  encoder blocks, 4 heads, MLP 256 -> 512 -> 256 with GELU;
- ``classifier.norm``: the final LayerNorm;
- ``classifier.attention_pool``: sequence pooling, a Linear(256, 1) scoring
  each token, whose softmax weights average the tokens;
- ``classifier.fc``: the linear head.

3,760,139 parameters with 10 classes (the paper's "3.7M"). Each block follows
the CCT reference code, including its unusual MLP half: the residual stream
itself is normalised (``norm1``) before the MLP is added to it. Dropout is 0,
attention dropout 0.1 and stochastic depth rises linearly from 0 to 0.1 over
the blocks, the CCT defaults for this variant; initialisation is theirs too
(truncated normal 0.02 for linear layers, 0.2 for the positional embedding,
Kaiming normal for the convolution).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .width import scaled


class Tokenizer(nn.Module):
    """Convolutional patches: conv 3x3, ReLU, max-pool, flattened to a token sequence."""

    def __init__(self, in_channels: int, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv_layers = nn.Sequential(nn.Sequential(
            nn.Conv2d(in_channels, dim, kernel_size, stride=1, padding=kernel_size // 2, bias=False),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ))
        nn.init.kaiming_normal_(self.conv_layers[0][0].weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_layers(x).flatten(2).transpose(1, 2)  # [B, tokens, dim]


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free qkv projection."""

    def __init__(self, dim: int, heads: int, attention_dropout: float):
        super().__init__()
        self.heads = heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if p == 0 or not training:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, attention_dropout: float, drop_path_rate: float):
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, attention_dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.self_attn(self.pre_norm(x)), self.drop_path_rate, self.training)
        x = self.norm1(x)
        return x + drop_path(self.linear2(F.gelu(self.linear1(x))), self.drop_path_rate, self.training)


class SeqPoolClassifier(nn.Module):
    """Positional embedding, encoder blocks, final norm, sequence pooling and the head."""

    def __init__(self, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float, num_classes: int,
                 attention_dropout: float, stochastic_depth: float):
        super().__init__()
        self.positional_emb = nn.Parameter(torch.zeros(1, tokens, dim))
        rates = torch.linspace(0, stochastic_depth, depth).tolist()
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, heads, int(dim * mlp_ratio), attention_dropout, r) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self.attention_pool = nn.Linear(dim, 1)
        self.fc = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.positional_emb, std=0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.positional_emb
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        weights = self.attention_pool(x).softmax(dim=1)  # [B, tokens, 1]
        return self.fc((weights.transpose(1, 2) @ x).squeeze(1))


class CCT(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, dim: int = 256,
                 depth: int = 7, heads: int = 4, mlp_ratio: float = 2.0, kernel_size: int = 3,
                 attention_dropout: float = 0.1, stochastic_depth: float = 0.1):
        super().__init__()
        self.tokenizer = Tokenizer(in_channels, dim, kernel_size)
        tokens = ((image_size - 1) // 2 + 1) ** 2  # after the stride-2 pool
        self.classifier = SeqPoolClassifier(tokens, dim, depth, heads, mlp_ratio, num_classes,
                                            attention_dropout, stochastic_depth)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.tokenizer(x))


def cct7_3x1(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: float = 1.0) -> CCT:
    """CCT-7/3x1: 7 blocks, embedding 256, 4 heads, MLP ratio 2, one 3x3 convolution.

    ``width`` scales the embedding dimension (256 at 1.0, rounded to a multiple
    of the 4 heads); the MLP keeps twice it, the heads stay 4.
    """
    return CCT(num_classes, in_channels, image_size, dim=scaled(256, width, multiple=4))
