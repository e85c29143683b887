"""The sample corpus: scene descriptions and captions, the renderer, the generator.

`scenes` says what a scene shows and what its captions say; `drawing` renders train, val and
test; `generate.py` is the script that plans the splits and writes the corpus.
"""
