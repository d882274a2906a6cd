"""A stand-in for a DeepSpeed engine in one process, for tests of the training step and loop."""


class PlainEngine:
    """The calls ``train_step`` and the evaluation make of a DeepSpeed engine, on a plain module."""

    def __init__(self, model):
        self.model = model

    @property
    def module(self):
        """The wrapped model, as DeepSpeed names it."""
        return self.model

    def __call__(self, **inputs):
        return self.model(**inputs)

    def backward(self, loss):
        loss.backward()

    def step(self):
        pass

    def eval(self):
        self.model.eval()
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)
        return self
