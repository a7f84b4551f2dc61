"""Plain nn.Modules used by the case studies; they know nothing about masks."""

from .cnn import SimpleCNN
from .lstm import LSTM, RepeatLSTMClassifier
from .mlp import MLP
from .pairs import PairLSTM, PairwiseFNN
from .resnet import CifarResNet
from .seq2seq import LSTMEncoderDecoder
from .transformer import Attention, DecoderLayer, EncoderLayer, TransformerEncoderDecoder

__all__ = ["MLP", "LSTM", "RepeatLSTMClassifier", "SimpleCNN", "Attention", "EncoderLayer", "PairwiseFNN",
           "PairLSTM", "LSTMEncoderDecoder", "DecoderLayer", "TransformerEncoderDecoder",
           "CifarResNet"]
