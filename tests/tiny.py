"""The model and data every tiny end-to-end test shares: LeNet5 on a 256/128 slice of digits (seconds)."""

LENET5_ON_DIGITS = """
[model]
name = "lenet5"
[data]
name = "digits"
limit_train = 256
limit_test = 128
"""
