"""A `text` input, streamed back a word at a time (the shape of Replicate's language models),
written the older way (`BasePredictor.predict`). It says in its log what it was given."""

from cog import BasePredictor, ConcatenateIterator, Input


class Predictor(BasePredictor):
    def predict(self, text: str = Input(description="What to say back")) -> ConcatenateIterator[str]:
        print(f"given text={text!r}", flush=True)
        for word in text.split():
            yield word + " "
