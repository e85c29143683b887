"""The sample corpus: scene descriptions and captions, two independent renderers, the generator.

`scenes` says what a scene shows and what its captions say; `drawing` is the main renderer
(train, val, test); `shifted` is a second renderer that shares no drawing code with it (the shift
split); `generate.py` is the script that plans the splits and writes the corpus.
"""
