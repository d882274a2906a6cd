"""A stand-in for a DeepSpeed engine in one process, for tests of the training step and loop."""


class PlainEngine:
    """The three calls ``train_step`` makes of a DeepSpeed engine, on a plain module."""

    def __init__(self, model):
        self.model = model

    def __call__(self, **inputs):
        return self.model(**inputs)

    def backward(self, loss):
        loss.backward()

    def step(self):
        pass
