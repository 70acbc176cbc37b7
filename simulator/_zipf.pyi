import numpy as np
from numpy.typing import NDArray

class ZipfCore:
    n: int
    alpha: float
    def __init__(self, n: int, alpha: float, seed_words: list[int]) -> None: ...
    def fill(self, out: NDArray[np.int64]) -> None: ...
