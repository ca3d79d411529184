"""The bundled rsc15-100k sample (see README.md in this folder)."""
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_PATH = os.path.join(_HERE, "rsc15_100k_train_full.tsv.gz")
TEST_PATH = os.path.join(_HERE, "rsc15_100k_test.tsv.gz")


def load_sample():
    """``(train, test)`` event tables of the bundled sample as dicts of arrays."""
    from ..data import read_events
    return read_events(TRAIN_PATH), read_events(TEST_PATH)
