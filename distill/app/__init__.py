"""``distill app``: a web page to try a student on a clip.

``inference`` serves one request (input checks, streamed answer, TTFT / TPOT / memory);
``page`` is the Gradio page around it.
"""
