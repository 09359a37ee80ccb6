"""Streaming: audio in chunk by chunk, the offline front end's and recogniser's outputs out.

Modules, in the order the data flows:

* :mod:`speechconv.streaming.front_end`: features then the conv encoder, one stream or a
  batch of independent ones (:func:`front_end_stream`);
* :mod:`speechconv.streaming.recogniser`: a forward-only CTC model on a front-end
  stream, log-probabilities and greedy ids per chunk (:class:`RecogniserStream`).

The feature and encoder streams themselves sit with their stages
(``LogMelDeltas.streaming()``, ``ConvEncoder.streaming()``).
"""

from speechconv.streaming.front_end import BatchedFrontEndStream, FrontEndStream, front_end_stream
from speechconv.streaming.recogniser import RecogniserStream

__all__ = ["BatchedFrontEndStream", "FrontEndStream", "RecogniserStream", "front_end_stream"]
