"""SPARTAN memories on a frozen transformer encoder.

The package holds everything that is about the model and not about serving it: the backbone
wrapper, the SPARTAN memory maths (reference and production paths), mixed-task batches, the
memory file format, training, evaluation and the throughput benchmark.
"""
